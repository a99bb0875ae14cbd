"""The statistics: paired bootstrap differences and simultaneous bands hold their coverage."""

import numpy as np

from probekit.stats import paired_mean_differences, resolvable_difference, simultaneous_band


def test_a_paired_difference_is_tighter_than_the_two_accuracies_and_centred():
    rng = np.random.default_rng(0)
    n, K = 300, 5
    easy = rng.random((n, 1)) < 0.8  # per-image difficulty shared by both prompts: the pairing matters
    a = easy & (rng.random((n, K)) < 0.95)
    b = easy & (rng.random((n, K)) < 0.85)
    r = paired_mean_differences(a, b, n_boot=2000, seed=1)
    np.testing.assert_allclose(r["estimate"], a.mean(0) - b.mean(0))
    assert (r["lo"] <= r["estimate"]).all() and (r["estimate"] <= r["hi"]).all()
    assert (r["band_lo"] <= r["lo"]).all() and (r["band_hi"] >= r["hi"]).all()  # the band is wider than pointwise
    assert r["c"] > 1.96


def test_the_simultaneous_band_covers_all_columns_together_at_its_level():
    """Under the null (no difference anywhere), the share of experiments in which *any* of 30 columns' bands
    excludes zero stays near alpha; pointwise intervals exclude zero somewhere far more often."""
    rng = np.random.default_rng(3)
    any_band = any_point = 0
    runs = 200
    for r in range(runs):
        x = rng.normal(size=(120, 30)) + rng.normal(size=(120, 1))  # correlated columns, true mean 0
        res = paired_mean_differences(x, np.zeros_like(x), n_boot=400, seed=r)
        any_band += bool(((res["band_lo"] > 0) | (res["band_hi"] < 0)).any())
        any_point += bool(((res["lo"] > 0) | (res["hi"] < 0)).any())
    assert any_band / runs <= 0.10 and any_point / runs >= 0.3


def test_band_of_a_constant_column_has_zero_width():
    lo, hi, c = simultaneous_band(np.array([0.5, 0.1]), np.array([[0.5, 0.0], [0.5, 0.2], [0.5, 0.1]]))
    assert lo[0] == hi[0] == 0.5 and lo[1] < 0.1 < hi[1] and c > 0


def test_resolvable_difference_shrinks_with_n():
    assert resolvable_difference(300) < resolvable_difference(60) and 0.10 < resolvable_difference(300) < 0.13
