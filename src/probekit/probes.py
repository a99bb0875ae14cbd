"""Per-layer linear probes with the scikit-learn estimator contract.

:class:`LayerProbes` holds one multinomial logistic-regression probe per layer (standardisation inside),
fitted on features of shape ``[n, layers, d]``. Two solvers minimise the same objective per layer (scikit-learn's
``mean cross-entropy + ||W||^2 / (2 C n)``, intercept free; binary problems with one logit, as scikit-learn):
``solver="torch"`` (default) fits all layers at once, ``solver="sklearn"`` loops ``LogisticRegression`` over
layers (the reference). Paper A's protocol is :func:`probe_store`: fit the probes
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
from .stats import bootstrap_ci

SOLVERS = ("torch", "sklearn")


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
    ``_`` (``classes_``, ``n_layers_``; torch: ``coef_`` [layers, d, k], ``intercept_`` [layers, k] on standardised
    features, ``mean_``/``scale_`` [layers, d], ``n_iter_``; sklearn: ``probes_``). ``score`` returns accuracy
    per layer.

    ``solver="torch"``: all layers in one batched problem, standardised inside, solved by full-batch L-BFGS
    (float32). When ``n < d`` the features are first rotated into the span of the training rows (a QR per
    layer): the gradient never leaves that span, so this is exact and makes each step ``d/n`` times cheaper.
    Deterministic (zero start, no sampling). ``tol``: stop when every gradient entry is below it (the
    criterion of scikit-learn's lbfgs). The default 1e-5 is tighter than scikit-learn's 1e-4: at 1e-4 both
    solvers stop early at points that differ by up to ~3 accuracy points on some layers of a 4096-wide,
    120-class problem; at 1e-5 they agree within 1 point (``benchmarks/bench_probes.py``). ``seed`` is the
    sklearn solver's ``random_state``.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 2000, standardize: bool = True, seed: int = 0,
                 solver: str = "torch", tol: float = 1e-5):
        self.C = C
        self.max_iter = max_iter
        self.standardize = standardize
        self.seed = seed
        self.solver = solver
        self.tol = tol

    def _base(self):
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol, random_state=self.seed)
        return make_pipeline(StandardScaler(), lr) if self.standardize else lr

    def fit(self, X, y):
        X = check_features(X, "probe training features")
        y = np.asarray(y)
        if len(X) != len(y):
            raise ProbekitError(f"{len(X)} feature rows but {len(y)} labels")
        if len(np.unique(y)) < 2:
            raise DataError("probes need at least two classes in the training labels")
        if self.solver not in SOLVERS:
            raise ProbekitError(f"unknown solver {self.solver!r}; use one of {', '.join(SOLVERS)}")
        for stale in ("probes_", "coef_", "intercept_", "mean_", "scale_", "n_iter_"):
            self.__dict__.pop(stale, None)
        self.classes_ = np.unique(y)
        self.n_layers_ = X.shape[1]
        if self.solver == "sklearn":
            base = self._base()
            self.probes_ = [clone(base).fit(X[:, i], y) for i in range(X.shape[1])]
        else:
            self._fit_torch(X, np.searchsorted(self.classes_, y))
        return self

    def _fit_torch(self, X, y):
        import torch

        Z = torch.from_numpy(np.ascontiguousarray(X.transpose(1, 0, 2), dtype=np.float32))  # [layers, n, d]
        L, n, d = Z.shape
        mean, scale = torch.zeros(L, 1, d), torch.ones(L, 1, d)
        if self.standardize:
            var, mean = torch.var_mean(Z, dim=1, keepdim=True, correction=0)
            scale = var.sqrt_()
            scale[scale < 10 * torch.finfo(torch.float32).eps * mean.abs().clamp(min=1)] = 1.0  # constant features
            Z.sub_(mean).div_(scale)
        Q = None
        if n < d:  # Z = R^T Q^T: fit V on R^T [L, n, n]; W = Q V
            Q, R = torch.linalg.qr(Z.transpose(1, 2))
            Z = R.transpose(1, 2).contiguous()
        K = len(self.classes_)
        W, b, self.n_iter_ = _batched_logreg(Z, torch.from_numpy(y), K, 1.0 / (self.C * n), Q, self.tol,
                                             self.max_iter)
        self.coef_ = (W if Q is None else torch.bmm(Q, W)).numpy()
        self.intercept_ = b.numpy()
        self.mean_, self.scale_ = mean[:, 0].numpy(), scale[:, 0].numpy()

    def _check(self, X):
        check_is_fitted(self, "classes_")
        X = check_features(X)
        if X.shape[1] != self.n_layers_:
            raise ProbekitError(f"features have {X.shape[1]} layers, the probes were fitted on {self.n_layers_}")
        return X

    def _logits(self, X) -> np.ndarray:
        Z = (X.astype(np.float32) - self.mean_) / self.scale_
        z = (Z.transpose(1, 0, 2) @ self.coef_).transpose(1, 0, 2) + self.intercept_  # [n, layers, k]
        return np.concatenate([np.zeros_like(z), z], -1) if z.shape[-1] == 1 else z

    def predict(self, X) -> np.ndarray:
        """Predicted labels ``[n, layers]``."""
        X = self._check(X)
        if hasattr(self, "probes_"):
            return np.stack([p.predict(X[:, i]) for i, p in enumerate(self.probes_)], axis=1)
        return self.classes_[self._logits(X).argmax(-1)]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities ``[n, layers, classes]``."""
        X = self._check(X)
        if hasattr(self, "probes_"):
            return np.stack([p.predict_proba(X[:, i]) for i, p in enumerate(self.probes_)], axis=1)
        z = self._logits(X)
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def score(self, X, y) -> np.ndarray:
        """Accuracy per layer ``[layers]``."""
        return (self.predict(X) == np.asarray(y)[:, None]).mean(axis=0)


def _batched_logreg(Z, y, K: int, lam: float, Q, tol: float, max_iter: int, history: int = 10):
    """Independent L2 logistic regressions, one per layer, minimised together by a batched L-BFGS.

    ``Z`` [L, n, r] features, ``y`` [n] class indices. Per layer: ``mean CE + lam/2 ||V||^2`` (binary: one logit).
    Every layer keeps its own curvature history, step size and stopping, and only unfinished layers are computed:
    a layer stops once every entry of its gradient (in the original feature space, ``Q @ grad`` when the features
    were rotated by ``Q``) is below ``tol``, scikit-learn's lbfgs criterion. Returns ``V`` [L, r, k], ``b`` [L, k]
    and the iterations per layer.
    """
    import torch
    import torch.nn.functional as F

    L, n, r = Z.shape
    k = 1 if K == 2 else K
    rk = r * k
    Y = F.one_hot(y, K).to(Z.dtype)[:, -k:]  # binary: indicator of the second class

    def fg(x, Zi):  # objective [a] and gradient [a, rk + k] of the layers with features Zi [a, n, r] at x
        V, b = x[:, :rk].view(-1, r, k), x[:, rk:].view(-1, 1, k)
        z = torch.baddbmm(b, Zi, V)
        if k == 1:
            f, G = (F.softplus(z) - Y * z).sum((1, 2)), torch.sigmoid(z) - Y
        else:
            lse = z.logsumexp(-1, keepdim=True)
            f, G = (lse - (z * Y).sum(-1, keepdim=True)).sum((1, 2)), torch.exp(z - lse) - Y
        f = f / n + 0.5 * lam * V.square().sum((1, 2))
        G = G / n
        return f, torch.cat([(torch.bmm(Zi.transpose(1, 2), G) + lam * V).flatten(1), G.sum(1)], 1)

    def converged(g, Qi):
        gv, done = g[:, :rk].view(-1, r, k), g[:, rk:].abs().amax(1) <= tol
        if Qi is None:
            return done & (gv.abs().amax((1, 2)) <= tol)
        done &= gv.square().sum((1, 2)) <= tol**2 * Qi.shape[1] * k  # max|Q g| >= ||g||_F / sqrt(d k): cheap test first
        m = done.nonzero()[:, 0]
        if len(m):
            done[m] = torch.bmm(Qi[m], gv[m]).abs().amax((1, 2)) <= tol
        return done

    # the working set: the layers still being optimised, compacted whenever some finish
    ids, x_out, n_iter = torch.arange(L), Z.new_zeros(L, rk + k), torch.zeros(L, dtype=torch.long)
    x = Z.new_zeros(L, rk + k)
    f, g = fg(x, Z)
    S, Yh, rho = Z.new_zeros(history, L, rk + k), Z.new_zeros(history, L, rk + k), Z.new_zeros(history, L)
    gamma, live = Z.new_ones(L), ~converged(g, Q)
    Zw, Qw = Z, Q
    for it in range(max_iter + 1):
        if not live.all():  # write back finished layers, keep the rest
            x_out[ids[~live]] = x[~live]
            ids, x, f, g, gamma = ids[live], x[live], f[live], g[live], gamma[live]
            S, Yh, rho, Zw = S[:, live], Yh[:, live], rho[:, live], Zw[live]
            Qw = None if Qw is None else Qw[live]
        if not len(ids) or it == max_iter:
            break
        slots = [j % history for j in range(it - 1, it - 1 - history, -1)]  # newest pair first
        q, alphas = g.clone(), []
        for j in slots:  # two-loop recursion; empty slots have rho = 0 and do nothing
            a = rho[j] * torch.linalg.vecdot(S[j], q)
            q.addcmul_(a[:, None], Yh[j], value=-1)
            alphas.append(a)
        q *= gamma[:, None]
        for j, a in zip(reversed(slots), reversed(alphas)):
            q.addcmul_((a - rho[j] * torch.linalg.vecdot(Yh[j], q))[:, None], S[j])
        d = q.neg_()
        gd = (g * d).sum(1)
        bad = gd >= 0  # not a descent direction (round-off): steepest descent
        d[bad], gd[bad] = -g[bad], -(g[bad] ** 2).sum(1)
        t = torch.ones(len(ids)) if it else (1.0 / g.norm(dim=1)).clamp(max=1.0)
        fn, gn, ok, pend = f.clone(), g.clone(), torch.zeros(len(ids), dtype=torch.bool), None
        for _ in range(30):  # backtracking line search, evaluating only the layers still searching
            if pend is None:
                fp, gp = fg(torch.addcmul(x, t[:, None], d), Zw)
                pend = torch.arange(len(ids))
            else:
                fp, gp = fg(torch.addcmul(x[pend], t[pend, None], d[pend]), Zw[pend])
            # Armijo, or near the optimum where float32 objective values stop resolving the decrease, the
            # approximate Wolfe conditions of Hager & Zhang (2005), which read the more precise gradient
            gpd, gdp = torch.linalg.vecdot(gp, d[pend]), gd[pend]
            good = (fp <= f[pend] + 1e-4 * t[pend] * gdp) | (
                (fp <= f[pend] + 1e-6 * f[pend].abs()) & (gpd >= 0.9 * gdp) & (gpd <= -0.8 * gdp))
            fn[pend[good]], gn[pend[good]], ok[pend[good]] = fp[good], gp[good], True
            pend = pend[~good]
            if not len(pend):
                break
            t[pend] *= 0.5
        slot = it % history
        sv, yv = torch.mul(d, t[:, None], out=S[slot]), torch.sub(gn, g, out=Yh[slot])
        sy = torch.linalg.vecdot(sv, yv)
        keep = ok & (sy > 1e-10)
        x.addcmul_(sv, ok[:, None].to(x.dtype))
        rho[slot] = torch.where(keep, 1.0 / sy.clamp(min=1e-10), 0.0)  # rho = 0: the pair is ignored
        gamma = torch.where(keep, sy / torch.linalg.vecdot(yv, yv).clamp(min=1e-30), gamma)
        f, g = fn, gn
        n_iter[ids] += ok.long()
        live = ok & ~converged(g, Qw)  # a layer without any decrease left (float32) is done
    x_out[ids] = x  # layers stopped by max_iter
    x = x_out
    return x[:, :rk].view(L, r, k), x[:, rk:], n_iter.numpy()

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
                n_boot: int = 1000, control: bool = True, variants: Sequence[str] | None = None,
                items: Sequence[int] | None = None):
    """Paper A's frozen-probe protocol on an :class:`~probekit.store.ActivationStore`.

    Fit one probe per layer on ``train_variant`` features of the training images; score every variant on
    the held-out images. Returns a DataFrame with one row per (layer, variant): ``layer, variant, family,
    accuracy, ci_low, ci_high, control_accuracy, chance, n_train, n_test``. ``control_accuracy`` is the
    same probe fitted on shuffled training labels and scored on that variant (it should sit at chance).
    ``items``: only these images (store positions), e.g. the images of one domain of a two-domain store.
    The fitted probes are in ``df.attrs["probes"]``; ``df.attrs["correct"]`` holds, per variant, the per-image
    correctness ``[n_test, L+1]`` (the same held-out images for every variant: what paired statistics resample).
    """
    import pandas as pd

    keep = np.arange(len(store.labels)) if items is None else np.asarray(items, dtype=np.int64)
    y = store.labels[keep]
    tr, te = split_items(y, test_size=test_size, seed=seed)
    tr, te = keep[tr], keep[te]  # positions in the store
    y = store.labels
    X_train = check_features(store.features(train_variant)[tr], f"variant {train_variant!r}")
    probes = LayerProbes(C=C, seed=seed).fit(X_train, y[tr])
    ctrl = None
    if control:
        y_shuf = np.random.default_rng(seed + 1).permutation(y[tr])
        ctrl = LayerProbes(C=C, seed=seed).fit(X_train, y_shuf)
    fam = {v.name: v.family for v in store.variants}
    rows, per_image, per_image_ctrl = [], {}, {}
    for name in variants or store.variant_names:
        X_test = check_features(store.features(name)[te], f"variant {name!r}")
        correct = probes.predict(X_test) == y[te][:, None]
        per_image[name] = correct
        acc, lo, hi = bootstrap_ci(correct, n_boot=n_boot, seed=seed)
        if ctrl is not None:
            per_image_ctrl[name] = ctrl.predict(X_test) == y[te][:, None]
            ctrl_acc = per_image_ctrl[name].mean(axis=0)
        else:
            ctrl_acc = np.full(len(acc), np.nan)
        for layer in range(len(acc)):
            rows.append({"layer": layer, "variant": name, "family": fam[name], "accuracy": acc[layer],
                         "ci_low": lo[layer], "ci_high": hi[layer], "control_accuracy": ctrl_acc[layer],
                         "chance": 1.0 / len(np.unique(y[keep])), "n_train": len(tr), "n_test": len(te)})
    df = pd.DataFrame(rows)
    df.attrs["probes"] = probes
    df.attrs["correct"] = per_image  # variant -> [n_test, L+1] bool: each held-out image, right or wrong, per layer
    df.attrs["control_correct"] = per_image_ctrl
    df.attrs["test_items"] = te
    df.attrs["n_boot"] = n_boot
    return df
