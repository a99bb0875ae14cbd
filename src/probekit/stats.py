"""The statistics every chapter uses: percentile-bootstrap intervals over images, paired differences.

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


def paired_difference(correct: np.ndarray, a: int, b: int, *, n_boot: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> tuple[float, float, float]:
    """Accuracy of column ``a`` minus column ``b`` of ``correct`` [n, k] (the same held-out images), with a
    percentile-bootstrap ``1-alpha`` interval over images (paired: one resample serves both columns)."""
    c = np.asarray(correct, dtype=np.float64)
    d = c[:, a] - c[:, b]
    boots = d[bootstrap_indices(len(d), n_boot, seed)].mean(1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(d.mean()), float(lo), float(hi)


__all__ = ["bootstrap_ci", "bootstrap_indices", "paired_difference"]
