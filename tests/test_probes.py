import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from probekit.errors import DataError, ProbekitError
from probekit.probes import LayerProbes, split_items
from probekit.stats import bootstrap_ci


def planted(n=300, d=20, classes=4, seed=0):
    """Layer 0: noise; layer 1: class means far apart (linearly separable); layer 2: weak signal."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    means = rng.normal(size=(classes, d)) * 4
    X = rng.normal(size=(n, 3, d))
    X[:, 1] += means[y]
    X[:, 2] += 0.3 * means[y]
    return X, y


def test_planted_signal_and_shuffled_control():
    X, y = planted()
    tr, te = split_items(y, test_size=0.3, seed=0)
    acc = LayerProbes().fit(X[tr], y[tr]).score(X[te], y[te])
    assert acc[1] >= 0.98
    assert acc[0] < 0.45  # chance is 0.25
    assert acc[0] < acc[2] < acc[1]
    shuffled = np.random.default_rng(1).permutation(y[tr])
    ctrl = LayerProbes().fit(X[tr], shuffled).score(X[te], y[te])
    assert ctrl[1] < 0.45


def test_estimator_contract_and_determinism():
    X, y = planted()
    p = LayerProbes(C=0.5, seed=3)
    assert p.get_params() == {"C": 0.5, "max_iter": 2000, "standardize": True, "seed": 3, "solver": "torch",
                              "tol": 1e-5}
    with pytest.raises(NotFittedError):
        p.predict(X)
    assert p.fit(X, y) is p
    assert p.n_layers_ == 3 and list(p.classes_) == [0, 1, 2, 3]
    q = clone(p).fit(X, y)
    np.testing.assert_array_equal(p.predict_proba(X), q.predict_proba(X))
    assert p.predict(X).shape == (len(X), 3)


def test_bootstrap_interval_brackets_accuracy_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.random(50) < 0.7
    big = rng.random(5000) < 0.7
    a, lo, hi = bootstrap_ci(small, seed=0)
    A, LO, HI = bootstrap_ci(big, seed=0)
    assert lo <= a <= hi and LO <= A <= HI
    assert (HI - LO) < (hi - lo) / 4
    accs, los, his = bootstrap_ci(np.stack([small, ~small], 1), seed=0)
    assert accs.shape == (2,) and np.all(los <= accs) and np.all(accs <= his)


def test_non_finite_features_are_stopped_before_the_probe():
    X, y = planted()
    X[5, 2, 0] = np.inf
    with pytest.raises(ProbekitError, match=r"layer\(s\) \[2\].*float32"):
        LayerProbes().fit(X, y)


def test_split_needs_two_images_per_class():
    with pytest.raises(DataError, match=r"class\(es\) \[2\] have fewer than 2"):
        split_items(np.array([0, 0, 1, 1, 2]))
    with pytest.raises(DataError, match="empty"):
        split_items(np.array([], dtype=int))
    tr, te = split_items(np.repeat(np.arange(5), 4), seed=0)
    assert set(np.repeat(np.arange(5), 4)[te]) == set(range(5)) and not set(tr) & set(te)


@pytest.mark.parametrize("classes, d", [(4, 20), (2, 20), (5, 400)])  # multinomial, binary, n < d (rotated)
def test_torch_solver_matches_the_sklearn_loop(classes, d):
    X, y = planted(classes=classes, d=d)
    X[:, 1] = X[:, 1] * np.linspace(0.1, 30, d) + 7  # unequal scales: standardisation matters
    tr, te = split_items(y, test_size=0.3, seed=0)
    fast = LayerProbes(solver="torch").fit(X[tr], y[tr])
    ref = LayerProbes(solver="sklearn").fit(X[tr], y[tr])
    assert np.abs(fast.score(X[te], y[te]) - ref.score(X[te], y[te])).max() <= 0.01
    np.testing.assert_allclose(fast.predict_proba(X[te]), ref.predict_proba(X[te]), atol=0.02)
    assert fast.coef_.shape == (3, d, 1 if classes == 2 else classes) and fast.intercept_.shape[0] == 3
    np.testing.assert_array_equal(fast.predict(X[te]), fast.classes_[fast.predict_proba(X[te]).argmax(-1)])


def test_torch_solver_is_deterministic_and_refits_cleanly():
    X, y = planted(d=50)
    labels = np.array(["cat", "dog", "eel", "fox"])[y]  # any label type
    a = LayerProbes().fit(X, labels)
    b = LayerProbes().fit(X, labels)
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert set(a.predict(X).ravel()) <= set(labels)
    a.set_params(solver="sklearn").fit(X, labels)
    assert not hasattr(a, "coef_") and len(a.probes_) == 3
    with pytest.raises(ProbekitError, match="unknown solver 'newton'"):
        LayerProbes(solver="newton").fit(X, y)
