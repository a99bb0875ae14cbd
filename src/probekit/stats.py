"""The statistics every chapter uses: percentile-bootstrap intervals over images, paired differences, and a pivotal
interval for statistics resampling biases.

Resampling is always over **images** (rows), never over prompts: a difference between two prompts, layers or
probes measured on the same images is resampled as one paired difference per image.
"""

from __future__ import annotations

import numpy as np


def bootstrap_indices(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """``[n_boot, n]`` row indices drawn with replacement (one resample of ``n`` images per row)."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(correct: np.ndarray, *, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0):
    """Accuracy and a percentile-bootstrap ``1-alpha`` interval over items, per column.

    ``correct``: boolean ``[n]`` or ``[n, k]`` (e.g. one column per layer). Returns ``(acc, lo, hi)``.
    """
    c = np.asarray(correct, dtype=np.float64)
    c2 = c[:, None] if c.ndim == 1 else c
    boots = c2[bootstrap_indices(len(c2), n_boot, seed)].mean(axis=1)  # [n_boot, k]
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2], axis=0)
    acc = c2.mean(axis=0)
    if c.ndim == 1:
        return float(acc[0]), float(lo[0]), float(hi[0])
    return acc, lo, hi


def wilson_interval(k: int, n: int) -> tuple[float, float]:
    """The Wilson score 95 % interval of a share ``k / n`` (scipy's ``binomtest(...).proportion_ci``): the interval
    the premise rule, the organisms' cards and the naming readout state."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(method="wilson")
    return float(ci.low), float(ci.high)


def paired_difference(correct: np.ndarray, a: int, b: int, *, n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> tuple[float, float, float]:
    """Accuracy of column ``a`` minus column ``b`` of ``correct`` [n, k] (the same held-out images), with a
    percentile-bootstrap ``1-alpha`` interval over images (paired: one resample serves both columns)."""
    c = np.asarray(correct, dtype=np.float64)
    d = c[:, a] - c[:, b]
    boots = d[bootstrap_indices(len(d), n_boot, seed)].mean(1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(d.mean()), float(lo), float(hi)


def pivotal_interval(n: int, statistic, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float]:
    """The basic (pivotal) bootstrap ``1-alpha`` interval of ``statistic(rows)`` over ``n`` images,
    ``[2 est - q(1-alpha/2), 2 est - q(alpha/2)]`` (``scipy.stats.bootstrap(method="basic")`` on the row indices, so
    one resample of images serves every array the statistic reads), clipped at 0 below for a non-negative statistic.

    For a statistic that resampling biases, as a mean absolute difference of two noisy curves (resampling adds
    noise, which only ever raises ``|a - b|``), the percentile interval sits above the estimate and BCa can sit
    below it; the pivotal interval reflects the bias back (it assumes ``est* - est`` behaves like ``est - true``),
    so it says, rightly, that the true value is more likely below the estimate than above it.
    ``statistic`` maps a 1-D array of row indices to a float.
    """
    from scipy.stats import bootstrap

    def stat(rows, axis=-1):
        rows = np.atleast_2d(rows)
        return np.array([statistic(r) for r in rows])

    res = bootstrap((np.arange(n),), stat, n_resamples=n_boot, vectorized=True, method="basic",
                    confidence_level=1 - alpha, rng=np.random.default_rng(seed))
    lo, hi = (float(np.ravel(x)[0]) for x in (res.confidence_interval.low, res.confidence_interval.high))
    return max(lo, 0.0), max(hi, 0.0)


def simultaneous_band(estimate: np.ndarray, boots: np.ndarray, *, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray, float]:
    """Intervals for ``K`` estimates that hold **together** with probability ``1-alpha`` (max-|t| bootstrap band).

    ``boots`` [B, K]: the estimates recomputed on ``B`` resamples of the images (the same resample for every
    column). Each column is standardised by its bootstrap standard error; ``c`` is the ``1-alpha`` quantile of the
    largest standardised deviation over the ``K`` columns, and the band is ``estimate +- c * se``. Controls the
    family-wise error over all ``K`` comparisons (e.g. layers x variant families) with less width than Bonferroni
    when the columns are correlated, as neighbouring layers are. Columns with zero spread get a zero-width band.
    Returns ``(lo, hi, c)``.
    """
    est = np.asarray(estimate, dtype=np.float64)
    b = np.asarray(boots, dtype=np.float64)
    se = b.std(axis=0, ddof=1)
    ok = se > 0
    z = np.zeros_like(b)
    z[:, ok] = np.abs(b[:, ok] - est[ok]) / se[ok]
    c = float(np.quantile(z.max(axis=1), 1 - alpha)) if ok.any() else 0.0
    return est - c * se, est + c * se, c


def paired_mean_differences(a: np.ndarray, b: np.ndarray, *, n_boot: int = 2000, seed: int = 0,
                            alpha: float = 0.05) -> dict[str, np.ndarray]:
    """Mean of ``a - b`` per column (``a``, ``b``: ``[n, K]`` per-image scores on the same images, e.g. the anchor's
    and a variant's probe correctness per layer), with pointwise percentile intervals and a simultaneous band over
    the ``K`` columns, both from one paired bootstrap over images. Returns ``estimate``, ``lo``, ``hi`` (pointwise),
    ``band_lo``, ``band_hi`` (simultaneous), ``boots`` [n_boot, K] and ``c`` (the band's critical value)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d2 = d[:, None] if d.ndim == 1 else d
    boots = d2[bootstrap_indices(len(d2), n_boot, seed)].mean(axis=1)
    est = d2.mean(axis=0)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2], axis=0)
    band_lo, band_hi, c = simultaneous_band(est, boots, alpha=alpha)
    return {"estimate": est, "lo": lo, "hi": hi, "band_lo": band_lo, "band_hi": band_hi, "boots": boots, "c": c}


def resolvable_difference(n: int, p: float = 0.5, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest difference of two accuracies near ``p`` on ``n`` images that a two-sided test at ``alpha``
    detects with probability ``power`` (normal approximation, conservatively for unpaired scores: paired data
    with positively correlated images resolve less)."""
    from scipy.stats import norm

    se = np.sqrt(2 * p * (1 - p) / n)
    return float((norm.ppf(1 - alpha / 2) + norm.ppf(power)) * se)


__all__ = ["bootstrap_ci", "bootstrap_indices", "paired_difference", "paired_mean_differences", "pivotal_interval",
           "resolvable_difference", "simultaneous_band", "wilson_interval"]
