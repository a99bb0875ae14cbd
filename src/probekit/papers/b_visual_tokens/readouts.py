"""Paper B's zero-shot readouts of image tokens, with ground truth derived from the images.

Every function takes plain arrays, so each can be checked on synthetic inputs (:mod:`.analysis` applies them
to the chapter's stores):

- :func:`foreground_masks` — per grid cell, foreground or background, from a clean black background
  (Fashion-MNIST): a pixel is *ink* when brighter than ``ink`` (default 16 of 255), a cell is *foreground*
  when at least ``min_fraction`` (default 0.5) of its pixels are ink;
- :func:`few_shot_segmentation` — a logistic-regression classifier (scikit-learn, standardized features) trained
  on the tokens of ``shots`` images, scored on held-out images' tokens: mIoU (mean of the foreground and the
  background IoU, ``jaccard_score(average="macro")``) and balanced accuracy of all episodes' predictions pooled,
  with per-image confusion counts for bootstrap intervals;
- :func:`correspondence` — nearest neighbour (cosine) of every foreground token of an image among the tokens
  of the same image under a known transform (:func:`flip_map`, :func:`shift_map`), scored as PCK: the share of
  points matched to the true cell exactly, and within one cell (Chebyshev distance ≤ 1); chance = a uniformly
  random cell;
- :func:`query_auroc` — a text query's dot product with every image token, scored per image by AUROC against
  the foreground mask (equal to ``sklearn.metrics.roc_auc_score`` on each image; vectorized because that
  function costs ~2 ms a call);
- :func:`key_variance` / :func:`input_agnostic` — the cross-image variance of keys per (layer, position),
  normalized by the layer's total variance, and the rule that calls late-layer positions input-agnostic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import ProbekitError

INK = 16
MIN_FRACTION = 0.5


# ---- ground truth -------------------------------------------------------------------------------------------


def cell_edges(size: int, n: int) -> np.ndarray:
    """Pixel edges of ``n`` equal cells along a side of ``size`` pixels (rounded)."""
    return np.linspace(0, size, n + 1).round().astype(int)


def foreground_masks(images: np.ndarray, grid: tuple[int, int], *, ink: int = INK,
                     min_fraction: float = MIN_FRACTION) -> np.ndarray:
    """``[n, rows*cols]`` bool (row-major cells): a cell is foreground when at least ``min_fraction`` of its
    pixels are brighter than ``ink``. ``images``: ``[n, H, W]`` grayscale or ``[n, H, W, 3]`` (max over
    channels) uint8 with a black background."""
    x = np.asarray(images)
    if x.ndim == 4:
        x = x.max(-1)
    if x.ndim != 3:
        raise ProbekitError(f"foreground_masks needs images [n, H, W] or [n, H, W, 3], got shape {x.shape}")
    rows, cols = grid
    H, W = x.shape[1:]
    if rows > H or cols > W or rows < 1 or cols < 1:
        raise ProbekitError(f"a {rows}x{cols} token grid does not fit {H}x{W} images")
    if not 0 < min_fraction <= 1:
        raise ProbekitError(f"min_fraction must be in (0, 1], got {min_fraction}")
    fg = x > ink
    ey, ex = cell_edges(H, rows), cell_edges(W, cols)
    out = np.zeros((len(x), rows * cols), bool)
    for r in range(rows):
        for c in range(cols):
            out[:, r * cols + c] = fg[:, ey[r]:ey[r + 1], ex[c]:ex[c + 1]].mean((1, 2)) >= min_fraction
    return out


def by_cell(x: np.ndarray, cells: np.ndarray, n_cells: int) -> np.ndarray:
    """Tokens ``[..., T, d]`` -> ``[..., n_cells, d]`` in cell order (tokens with cell -1 dropped); every cell must
    have exactly one token."""
    cells = np.asarray(cells)
    idx = np.full(n_cells, -1)
    for t, c in enumerate(cells):
        if c >= 0:
            if idx[c] >= 0:
                raise ProbekitError(f"cell {c} has two tokens ({idx[c]} and {t})")
            idx[c] = t
    if (idx < 0).any():
        raise ProbekitError(f"cells {np.flatnonzero(idx < 0).tolist()} have no token")
    return np.take(x, idx, axis=-2)


# ---- transforms with known correspondences ---------------------------------------------------------------


def flip_images(images: np.ndarray) -> np.ndarray:
    """Mirror left-right (``[n, H, W(, 3)]``)."""
    return np.ascontiguousarray(np.flip(np.asarray(images), axis=2))


def shift_images(images: np.ndarray, pixels: int) -> np.ndarray:
    """Shift right by ``pixels`` (left by a negative number), filling with black."""
    x = np.asarray(images)
    out = np.zeros_like(x)
    if pixels >= 0:
        out[:, :, pixels:] = x[:, :, : x.shape[2] - pixels]
    else:
        out[:, :, :pixels] = x[:, :, -pixels:]
    return out


def flip_map(grid: tuple[int, int]) -> np.ndarray:
    """Cell ``(r, c)`` of an image is cell ``(r, cols-1-c)`` of its mirror image (exact when the image width is
    a multiple of the columns)."""
    rows, cols = grid
    r, c = np.divmod(np.arange(rows * cols), cols)
    return r * cols + (cols - 1 - c)


def shift_map(grid: tuple[int, int], shift: int) -> np.ndarray:
    """Cell ``(r, c)`` is cell ``(r, c + shift)`` of the image shifted by ``shift`` whole cells; -1 when it left
    the frame."""
    rows, cols = grid
    r, c = np.divmod(np.arange(rows * cols), cols)
    c2 = c + shift
    return np.where((c2 >= 0) & (c2 < cols), r * cols + c2, -1)


def shift_pixels(size: int, cols: int, shift: int) -> int:
    """Pixels of a shift by ``shift`` whole cells; the image width must split into equal cells."""
    if size % cols:
        raise ProbekitError(f"a {size}-pixel-wide image does not split into {cols} equal token columns, so a shift "
                            "by whole tokens has no exact correspondence; use images whose width is a multiple")
    return shift * size // cols


# ---- (a) few-shot segmentation ---------------------------------------------------------------------------


def segmentation_episodes(pool: Sequence[int], y: np.ndarray, *, shots: int, episodes: int, seed: int = 0) -> list[np.ndarray]:
    """``episodes`` draws of ``shots`` training images from ``pool`` whose tokens hold both classes (seeded)."""
    pool = np.asarray(pool)
    if shots < 1 or episodes < 1 or shots > len(pool):
        raise ProbekitError(f"cannot draw {shots}-shot episodes from {len(pool)} training images (episodes={episodes})")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(episodes):
        for _ in range(100):
            pick = np.sort(rng.choice(pool, shots, replace=False))
            lab = y[pick]
            if lab.any() and not lab.all():
                break
        else:
            raise ProbekitError("no training draw holds both foreground and background tokens")
        out.append(pick)
    return out


def few_shot_segmentation(X: np.ndarray, y: np.ndarray, episodes: Sequence[np.ndarray], test: Sequence[int], *,
                          C: float = 1.0, seed: int = 0) -> dict:
    """Foreground vs background per token. ``X`` ``[n, T, d]`` (tokens with NaN are left out), ``y`` ``[n, T]``;
    each episode trains ``StandardScaler + LogisticRegression(C)`` on the tokens of its images and predicts the
    tokens of the ``test`` images.

    Returns ``miou`` (``jaccard_score(average="macro")``: the mean of the foreground and background IoU) and
    ``balanced_accuracy`` of all episodes' predictions pooled, the per-episode spread (``*_sd``), and ``counts``
    ``[len(test), 4]``: per test image the (TP, FP, FN, TN) of the foreground summed over episodes, from which
    :func:`miou_from_counts` recomputes the pooled mIoU (for bootstrap intervals over images)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, jaccard_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, bool)
    ok = ~np.isnan(X).any(-1)  # [n, T]
    test = np.asarray(test)
    img = np.broadcast_to(np.arange(len(test))[:, None], ok[test].shape)[ok[test]]  # test image of each token
    Xte, yte = X[test][ok[test]], y[test][ok[test]]
    counts = np.zeros((len(test), 4), np.int64)
    preds, per_miou, per_bacc = [], [], []
    for pick in episodes:
        Xtr, ytr = X[pick][ok[pick]], y[pick][ok[pick]]
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
        pred = clf.fit(Xtr, ytr).predict(Xte).astype(bool)
        preds.append(pred)
        per_miou.append(jaccard_score(yte, pred, average="macro", zero_division=0.0))
        per_bacc.append(balanced_accuracy_score(yte, pred))
        for j, cell in enumerate((pred & yte, pred & ~yte, ~pred & yte, ~pred & ~yte)):
            counts[:, j] += np.bincount(img[cell], minlength=len(test))
    yy, pp = np.tile(yte, len(preds)), np.concatenate(preds)
    return {"miou": float(jaccard_score(yy, pp, average="macro", zero_division=0.0)),
            "balanced_accuracy": float(balanced_accuracy_score(yy, pp)),
            "miou_sd": float(np.std(per_miou)), "balanced_accuracy_sd": float(np.std(per_bacc)),
            "counts": counts, "n_test_tokens": len(yte), "episodes": len(preds)}


def miou_from_counts(counts: np.ndarray) -> np.ndarray:
    """mIoU (mean of foreground and background IoU) from (TP, FP, FN, TN) counts ``[..., 4]``."""
    tp, fp, fn, tn = np.moveaxis(np.asarray(counts, np.float64), -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 0.5 * (np.nan_to_num(tp / (tp + fp + fn)) + np.nan_to_num(tn / (tn + fn + fp)))


def balanced_accuracy_from_counts(counts: np.ndarray) -> np.ndarray:
    """Balanced accuracy (mean recall of foreground and background) from (TP, FP, FN, TN) ``[..., 4]``."""
    tp, fp, fn, tn = np.moveaxis(np.asarray(counts, np.float64), -1, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 0.5 * (tp / (tp + fn) + tn / (tn + fp))


# ---- (b) correspondence --------------------------------------------------------------------------------------


def nearest_cells(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """For each image and source cell, the target cell of highest cosine similarity: ``src`` ``[n, C, d]``,
    ``tgt`` ``[n, C', d]`` -> ``[n, C]``."""
    def unit(a):
        a = np.asarray(a, dtype=np.float64)
        return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)

    return np.einsum("ncd,nkd->nck", unit(src), unit(tgt)).argmax(-1)


def correspondence(src: np.ndarray, tgt: np.ndarray, mapping: np.ndarray, points: np.ndarray,
                   grid: tuple[int, int]) -> dict:
    """PCK of nearest-neighbour matching from ``src`` to ``tgt`` (``[n, C, d]`` per cell, row-major), scored on
    ``points`` ``[n, C]`` (e.g. the source's foreground cells) whose true target ``mapping[c]`` exists.

    ``pck0``: share matched to exactly the true cell; ``pck1``: within one cell (Chebyshev distance ≤ 1);
    ``chance0`` / ``chance1``: the same for a uniformly random target cell; ``hits0`` / ``hits1`` / ``points``
    ``[n]``: per image (for bootstrap intervals over images)."""
    rows, cols = grid
    mapping = np.asarray(mapping)
    pts = np.asarray(points, bool) & (mapping >= 0)[None]
    if not pts.any():
        raise ProbekitError("no correspondence points: no foreground cell keeps a target under this transform")
    pred = nearest_cells(src, tgt)
    true = np.broadcast_to(mapping, pred.shape)
    d = np.maximum(np.abs(pred // cols - true // cols), np.abs(pred % cols - true % cols))
    r, c = np.divmod(np.arange(rows * cols), cols)
    near = (np.maximum(np.abs(r[:, None] - r[None]), np.abs(c[:, None] - c[None])) <= 1).sum(1)  # per true cell
    return {"pck0": float((d[pts] == 0).mean()), "pck1": float((d[pts] <= 1).mean()),
            "chance0": 1.0 / (rows * cols), "chance1": float((near[true[pts]] / (rows * cols)).mean()),
            "n_points": int(pts.sum()), "hits0": ((d == 0) & pts).sum(1), "hits1": ((d <= 1) & pts).sum(1),
            "points": pts.sum(1)}


# ---- (c) text-query segmentation -----------------------------------------------------------------------------


def query_auroc(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per image, the AUROC of ``scores`` ``[n, T]`` for the foreground ``y`` ``[n, T]`` (ties count one half;
    NaN scores are left out; NaN for an image without both classes). Equal to ``roc_auc_score`` per image."""
    s = np.asarray(scores, dtype=np.float64)
    ok = ~np.isnan(s)
    pos, neg = np.asarray(y, bool) & ok, ~np.asarray(y, bool) & ok
    gt = (s[:, :, None] > s[:, None, :]) + 0.5 * (s[:, :, None] == s[:, None, :])  # [n, i, j]
    pair = pos[:, :, None] & neg[:, None, :]
    n_pairs = pair.sum((1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pairs > 0, (gt * pair).sum((1, 2)) / n_pairs, np.nan)


def query_scores(tokens: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Dot product of each image's tokens ``[n, T, d]`` with its query ``[n, d]`` -> ``[n, T]``."""
    return np.einsum("ntd,nd->nt", np.asarray(tokens, np.float64), np.asarray(queries, np.float64))


# ---- input-agnostic keys -------------------------------------------------------------------------------------


def key_variance(keys: np.ndarray) -> np.ndarray:
    """``keys`` ``[n, L, T, d]`` -> ``[L, T]``: per layer and position, the variance of the key across images
    (summed over dimensions) divided by the layer's total variance over all images and positions. Near 0: the
    position's key is (almost) the same whatever the image."""
    k = np.asarray(keys, dtype=np.float64)
    if k.ndim != 4 or len(k) < 2:
        raise ProbekitError(f"key_variance needs keys [n >= 2 images, L, T, d], got shape {k.shape}")
    across = ((k - k.mean(0, keepdims=True)) ** 2).sum(-1).mean(0)  # [L, T]
    flat = k.transpose(1, 0, 2, 3).reshape(k.shape[1], -1, k.shape[3])  # [L, n*T, d]
    total = ((flat - flat.mean(1, keepdims=True)) ** 2).sum(-1).mean(1)  # [L]
    return across / np.maximum(total[:, None], 1e-30)


def late_layers(layers: Sequence[int], n_layers: int, late_from: float) -> list[int]:
    """The layers counted as late: ``l > late_from * n_layers`` (0.5: the second half)."""
    if not 0 <= late_from < 1:
        raise ProbekitError(f"late_from must be in [0, 1), got {late_from}")
    return [int(l) for l in layers if l > late_from * n_layers]


def input_agnostic(ratio: np.ndarray, layers: Sequence[int], *, n_layers: int, threshold: float = 0.1,
                   late_from: float = 0.5) -> dict[int, list[int]]:
    """Positions whose keys are input-agnostic: at each late layer (:func:`late_layers`), the positions ``t``
    with ``ratio[layer, t] < threshold`` (``ratio`` from :func:`key_variance`, rows = ``layers``). Returns
    ``{layer: [positions]}`` with the layers that have any."""
    if threshold <= 0:
        raise ProbekitError(f"threshold must be positive, got {threshold}")
    ratio = np.asarray(ratio)
    late = set(late_layers(layers, n_layers, late_from))
    out = {}
    for row, l in enumerate(layers):
        if int(l) in late:
            pos = np.flatnonzero(ratio[row] < threshold).tolist()
            if pos:
                out[int(l)] = pos
    return out


__all__ = ["INK", "MIN_FRACTION", "balanced_accuracy_from_counts", "by_cell", "cell_edges", "correspondence", "few_shot_segmentation", "flip_images",
           "flip_map", "foreground_masks", "input_agnostic", "key_variance", "late_layers", "miou_from_counts", "nearest_cells",
           "query_auroc", "query_scores", "segmentation_episodes", "shift_images", "shift_map", "shift_pixels"]
