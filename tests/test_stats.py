"""The statistics: paired bootstrap differences and simultaneous bands hold their coverage."""

import numpy as np
import pytest

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


def test_the_curve_difference_interval_is_not_pushed_above_the_estimate_by_the_absolute_value():
    """Two models with the same true curve, answering alike on most images: D = mean |a - b| is biased upwards by
    resampling, so the percentile interval starts at the estimate (chapter 4 once printed D = 0.011, CI
    0.012-0.031); the pivotal interval reaches well below it. With a real difference of 0.1 it covers 0.1."""
    from probekit.papers.a_stages.comparison import curve_difference
    from probekit.stats import bootstrap_indices

    rng = np.random.default_rng(0)
    a = (rng.random((300, 31)) < 0.5).astype(float)
    b = np.where(rng.random((300, 31)) < 0.1, 1 - a, a)  # same true curve, 10 % of answers flipped
    est, lo, hi = curve_difference(a, b, n_boot=1000)
    grid, x = np.linspace(0, 1, 21), np.linspace(0, 1, 31)
    d = lambda i: np.mean(np.abs(np.interp(grid, x, a[i].mean(0)) - np.interp(grid, x, b[i].mean(0))))  # noqa: E731
    pct_lo = np.quantile([d(i) for i in bootstrap_indices(300, 1000, 3)], 0.025)
    assert est == pytest.approx(d(np.arange(300)))
    assert pct_lo >= est - 1e-9  # the percentile interval holds nothing below its estimate
    assert 0 <= lo < est / 2 and hi == pytest.approx(est, abs=0.002)

    shifted = np.where((rng.random((300, 31)) < 0.2) & (a == 1), 0.0, a)  # 0.5 -> 0.4: a true D of 0.1
    est, lo, hi = curve_difference(a, shifted, n_boot=1000)
    assert lo < 0.1 < hi and lo > 0.05


def test_pivotal_interval_is_seeded_and_narrows_with_n():
    from probekit.stats import pivotal_interval

    x = np.random.default_rng(0).random(2000)
    small = pivotal_interval(100, lambda i: x[:100][i].mean(), seed=4)
    assert small == pivotal_interval(100, lambda i: x[:100][i].mean(), seed=4)
    big = pivotal_interval(2000, lambda i: x[i].mean(), seed=4)
    assert big[1] - big[0] < (small[1] - small[0]) / 3
    assert big[0] < x.mean() < big[1]


def test_wilson_interval_matches_the_textbook_value_and_brackets_the_share():
    from probekit.stats import wilson_interval

    lo, hi = wilson_interval(8, 10)  # Wilson score interval, z = 1.96: 0.4902-0.9433
    assert abs(lo - 0.4902) < 1e-3 and abs(hi - 0.9433) < 1e-3
    lo, hi = wilson_interval(0, 40)
    assert lo == 0.0 and 0.0 < hi < 0.1
