"""Per-layer linear probes with the scikit-learn estimator contract.

:class:`LayerProbes` holds one multinomial logistic-regression probe per layer (standardisation inside),
fitted on features of shape ``[n, layers, d]``. Paper A's protocol is :func:`probe_store`: fit the probes
on the anchor question's features of the training images, freeze them, and score them on the held-out
images under every variant; a probe fitted on shuffled labels gives the control.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted

from .errors import DataError, ProbekitError


def check_features(X: np.ndarray, where: str = "features") -> np.ndarray:
    """Ensure a finite float array [n, layers, d]; NaN/inf (e.g. fp16 overflow) raises naming the layers."""
    X = np.asarray(X)
    if X.ndim == 2:
        X = X[:, None, :]
    if X.ndim != 3:
        raise ProbekitError(f"{where}: expected an array [n, layers, d], got shape {X.shape}")
    bad = ~np.isfinite(X)
    if bad.any():
        layers = np.flatnonzero(bad.any(axis=(0, 2))).tolist()
        raise ProbekitError(
            f"{where}: {int(bad.sum())} NaN/inf values at layer(s) {layers[:10]}{'...' if len(layers) > 10 else ''} "
            "(fp16 overflow is the usual cause); extract again with --dtype float32 or bfloat16"
        )
    return X


class LayerProbes(BaseEstimator):
    """One linear probe per layer. ``X``: ``[n, layers, d]``; ``y``: class labels ``[n]``.

    Parameters are stored by the constructor only; ``fit`` returns ``self``; fitted attributes end in
    ``_`` (``probes_``, ``classes_``, ``n_layers_``). ``score`` returns accuracy per layer.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 2000, standardize: bool = True, seed: int = 0):
        self.C = C
        self.max_iter = max_iter
        self.standardize = standardize
        self.seed = seed

    def _base(self):
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        return make_pipeline(StandardScaler(), lr) if self.standardize else lr

    def fit(self, X, y):
        X = check_features(X, "probe training features")
        y = np.asarray(y)
        if len(X) != len(y):
            raise ProbekitError(f"{len(X)} feature rows but {len(y)} labels")
        if len(np.unique(y)) < 2:
            raise DataError("probes need at least two classes in the training labels")
        base = self._base()
        self.probes_ = [clone(base).fit(X[:, i], y) for i in range(X.shape[1])]
        self.classes_ = np.unique(y)
        self.n_layers_ = X.shape[1]
        return self

    def _check(self, X):
        check_is_fitted(self, "probes_")
        X = check_features(X)
        if X.shape[1] != self.n_layers_:
            raise ProbekitError(f"features have {X.shape[1]} layers, the probes were fitted on {self.n_layers_}")
        return X

    def predict(self, X) -> np.ndarray:
        """Predicted labels ``[n, layers]``."""
        X = self._check(X)
        return np.stack([p.predict(X[:, i]) for i, p in enumerate(self.probes_)], axis=1)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``[n, layers, classes]``."""
        X = self._check(X)
        return np.stack([p.predict_proba(X[:, i]) for i, p in enumerate(self.probes_)], axis=1)

    def score(self, X, y) -> np.ndarray:
        """Accuracy per layer ``[layers]``."""
        return (self.predict(X) == np.asarray(y)[:, None]).mean(axis=0)


def bootstrap_ci(correct: np.ndarray, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0):
    """Accuracy and a percentile-bootstrap ``1-alpha`` interval over items, per column.

    ``correct``: boolean ``[n]`` or ``[n, k]`` (e.g. one column per layer). Returns ``(acc, lo, hi)``.
    """
    c = np.asarray(correct, dtype=np.float64)
    c2 = c[:, None] if c.ndim == 1 else c
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(c2), size=(n_boot, len(c2)))
    boots = c2[idx].mean(axis=1)  # [n_boot, k]
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2], axis=0)
    acc = c2.mean(axis=0)
    if c.ndim == 1:
        return float(acc[0]), float(lo[0]), float(hi[0])
    return acc, lo, hi


def split_items(labels: np.ndarray, *, test_size: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test split of item indices (every class on both sides)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        raise DataError("the dataset is empty: no images to split into train and test")
    counts = np.bincount(labels)
    small = [int(c) for c in np.flatnonzero((counts > 0) & (counts < 2))]
    if small:
        raise DataError(
            f"class(es) {small} have fewer than 2 images, so no train/test split is possible; "
            "add images or raise n_per_class"
        )
    idx = np.arange(len(labels))
    n_classes = int((counts > 0).sum())
    n_test = max(int(round(test_size * len(labels))), n_classes)
    if len(labels) - n_test < n_classes:
        raise DataError(f"{len(labels)} images are too few for a stratified split over {n_classes} classes; add images")
    tr, te = train_test_split(idx, test_size=n_test, stratify=labels, random_state=seed)
    return np.sort(tr), np.sort(te)


def probe_store(store, *, train_variant: str = "anchor", test_size: float = 0.3, seed: int = 0, C: float = 1.0,
                n_boot: int = 1000, control: bool = True, variants: Sequence[str] | None = None):
    """Paper A's frozen-probe protocol on an :class:`~probekit.store.ActivationStore`.

    Fit one probe per layer on ``train_variant`` features of the training images; score every variant on
    the held-out images. Returns a DataFrame with one row per (layer, variant): ``layer, variant, family,
    accuracy, ci_low, ci_high, control_accuracy, chance, n_train, n_test``. ``control_accuracy`` is the
    same probe fitted on shuffled training labels and scored on that variant (it should sit at chance).
    The fitted probes are in ``df.attrs["probes"]``.
    """
    import pandas as pd

    y = store.labels
    tr, te = split_items(y, test_size=test_size, seed=seed)
    X_train = check_features(store.features(train_variant)[tr], f"variant {train_variant!r}")
    probes = LayerProbes(C=C, seed=seed).fit(X_train, y[tr])
    ctrl = None
    if control:
        y_shuf = np.random.default_rng(seed + 1).permutation(y[tr])
        ctrl = LayerProbes(C=C, seed=seed).fit(X_train, y_shuf)
    fam = {v.name: v.family for v in store.variants}
    rows = []
    for name in variants or store.variant_names:
        X_test = check_features(store.features(name)[te], f"variant {name!r}")
        correct = probes.predict(X_test) == y[te][:, None]
        acc, lo, hi = bootstrap_ci(correct, n_boot=n_boot, seed=seed)
        ctrl_acc = ctrl.score(X_test, y[te]) if ctrl is not None else np.full(len(acc), np.nan)
        for layer in range(len(acc)):
            rows.append({"layer": layer, "variant": name, "family": fam[name], "accuracy": acc[layer],
                         "ci_low": lo[layer], "ci_high": hi[layer], "control_accuracy": ctrl_acc[layer],
                         "chance": 1.0 / len(np.unique(y)), "n_train": len(tr), "n_test": len(te)})
    df = pd.DataFrame(rows)
    df.attrs["probes"] = probes
    return df
