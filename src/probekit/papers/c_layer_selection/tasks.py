"""Image tasks with exact ground truth, built from real images at the model's image size (paper C's task
types in miniature: fine-grained class, counting, position, reading).

    from probekit.papers.c_layer_selection.tasks import build_tasks, model_image_size
    size = model_image_size(lm.processor)            # 28 for the organisms
    tasks = build_tasks(size, n_per_class=100, seed=0)
    tasks["count"].labels, tasks["count"].cells      # exact: k objects, the cells they occupy

Every task is a :class:`VisionTask`: square grayscale canvases ``[n, S, S]`` (uint8, black background, as
Fashion-MNIST), labels, class names and, for the composed tasks, the occupied grid cells. All images come
from data the organisms never trained on: the Fashion-MNIST **test** split and the held-out third of
scikit-learn's digits (:func:`probekit.data.digits_split`).

- ``class``: a Fashion-MNIST test image resized to S x S; label = its class (10 classes).
- ``count``: a ``count_grid`` x ``count_grid`` grid of cells (default 3 x 3); k = 1..``max_count`` (default 6)
  distinct cells hold one downscaled Fashion-MNIST test item each (random items and classes); label = k - 1,
  the class names are "1".."max_count". Items are scaled to the cell minus a 1-pixel margin, so every item's
  ink stays inside its cell: the count is exact.
- ``position``: one downscaled item in one cell of a ``position_grid`` x ``position_grid`` grid (default 3 x
  3); label = the cell, row-major ("top-left" .. "bottom-right").
- ``reading``: a held-out handwritten digit (8 x 8) upscaled to S x S; label = the digit (the "OCR" task).

Counting has a confound worth naming: more items mean more ink. Items are random classes (a sandal has
a fraction of a pullover's ink), which blurs ink as a cue, but a probe may still partly count by ink.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ...data.sets import (
    DIGIT_CLASSES,
    FASHION_MNIST_CLASSES,
    load_digits_arrays,
    load_fashion_mnist_arrays,
)
from ...errors import ProbekitError

TASKS = ("class", "count", "position", "reading")
TASK_TITLES = {"class": "fine-grained class", "count": "counting", "position": "position", "reading": "reading (digits)"}
MARGIN = 1  # pixels left empty on each side of a cell


@dataclass
class VisionTask:
    """One task: canvases ``images`` [n, S, S] uint8, ``labels`` [n], class names; ``cells`` [n, g*g] bool
    marks the occupied cells of the composed tasks (None otherwise); ``sources`` [n, max items] are the
    Fashion-MNIST test / held-out digit indices used (-1 = none)."""

    name: str
    classes: list[str]
    images: np.ndarray
    labels: np.ndarray
    source: str
    cells: np.ndarray | None = None
    grid: int | None = None
    sources: np.ndarray | None = None
    spec: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def pil(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[int(i)]).convert("RGB")

    def pil_images(self) -> list[Image.Image]:
        return [self.pil(i) for i in range(len(self))]

    def identity(self) -> dict:
        """What changes the images (for cache keys)."""
        return {"task": self.name, **self.spec, "n": len(self), "size": self.size,
                "checksum": int(np.asarray(self.images, dtype=np.int64).sum() % 1_000_000_007)}


def model_image_size(processor, dynamic_default: int = 224) -> int:
    """The square side (pixels) the model's image processor works at.

    CLIP-style processors (LLaVA, LLaVA-NeXT's base view): the centre-crop size, else the resize size.
    Qwen2-VL-style processors resize to a pixel budget ``[min_pixels, max_pixels]`` in steps of
    ``patch_size * merge_size``: when the budget is one size (the organisms: 28 x 28) that side, otherwise
    ``dynamic_default`` clamped to the budget and rounded to the step.
    """
    ip = getattr(processor, "image_processor", processor)
    crop = getattr(ip, "crop_size", None)
    if getattr(ip, "do_center_crop", False) and crop:
        return int(_get(crop, "height"))
    size = getattr(ip, "size", None) or {}
    if "height" in size:
        return int(size["height"])
    if "longest_edge" in size and getattr(ip, "merge_size", None):
        step = int(ip.patch_size) * int(ip.merge_size)
        lo, hi = np.sqrt(size.get("shortest_edge") or step * step), np.sqrt(size["longest_edge"])
        side = float(np.clip(dynamic_default, lo, hi))
        side = int(round(side / step)) * step
        return int(np.clip(side, int(np.ceil(lo / step)) * step, int(hi // step) * step))
    if "shortest_edge" in size:
        return int(size["shortest_edge"])
    raise ProbekitError(f"cannot read an image size from {type(ip).__name__}; pass image_size explicitly")


def _get(d, k):
    return d[k] if isinstance(d, dict) else getattr(d, k)


def cell_boxes(size: int, grid: int) -> list[tuple[int, int, int, int]]:
    """The ``grid`` x ``grid`` cells of an S x S canvas, row-major, as (y0, y1, x0, x1)."""
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    return [(int(edges[r]), int(edges[r + 1]), int(edges[c]), int(edges[c + 1]))
            for r in range(grid) for c in range(grid)]


def cell_names(grid: int) -> list[str]:
    rows = {2: ("top", "bottom"), 3: ("top", "middle", "bottom")}.get(grid)
    cols = {2: ("left", "right"), 3: ("left", "centre", "right")}.get(grid)
    if rows is None:
        return [f"r{r}c{c}" for r in range(grid) for c in range(grid)]
    return [f"{rows[r]}-{cols[c]}" for r in range(grid) for c in range(grid)]


def resize(img: np.ndarray, side: int) -> np.ndarray:
    """Grayscale uint8 resized to side x side (antialiased)."""
    if img.shape == (side, side):
        return img.copy()
    return np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.LANCZOS
                                                  if side < img.shape[0] else Image.Resampling.BILINEAR))


def item_side(size: int, grid: int, margin: int = MARGIN) -> int:
    """The side of every item on a grid x grid canvas: the smallest cell minus the margins (one size for all
    cells, so an item's size says nothing about where it is)."""
    return min(min(y1 - y0, x1 - x0) for y0, y1, x0, x1 in cell_boxes(size, grid)) - 2 * margin


def place(canvas: np.ndarray, item: np.ndarray, box: tuple[int, int, int, int], side: int | None = None,
          margin: int = MARGIN) -> None:
    """Paste ``item`` downscaled to ``side`` (default: the box minus ``margin`` on every side), centred in
    ``box`` (in place)."""
    y0, y1, x0, x1 = box
    side = side or min(y1 - y0, x1 - x0) - 2 * margin
    if side < 3:
        raise ProbekitError(f"a {y1 - y0}x{x1 - x0} cell is too small for an item; use a smaller grid or larger images")
    small = resize(item, side)
    oy = y0 + (y1 - y0 - side) // 2
    ox = x0 + (x1 - x0 - side) // 2
    region = canvas[oy:oy + side, ox:ox + side]
    np.maximum(region, small, out=region)


@functools.lru_cache(maxsize=2)
def _fashion_test(root: str | None = None):
    x, y = load_fashion_mnist_arrays(root, split="test")
    x.flags.writeable = False
    return x, y


def _pick_per_class(labels: np.ndarray, n_per_class: int | None, rng) -> np.ndarray:
    out = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        out.append(idx[:n_per_class] if n_per_class else idx)
    return np.sort(np.concatenate(out))


def class_task(size: int, n_per_class: int | None = 100, seed: int = 0, *,
               fashion_root: str | None = None) -> VisionTask:
    """Fashion-MNIST test images resized to ``size``; label = class."""
    x, y = _fashion_test(fashion_root)
    idx = _pick_per_class(y, n_per_class, np.random.default_rng(seed + 101))
    imgs = np.stack([resize(x[i], size) for i in idx])
    return VisionTask("class", list(FASHION_MNIST_CLASSES), imgs, y[idx], "Fashion-MNIST test split",
                      sources=idx[:, None], spec={"n_per_class": n_per_class, "seed": seed})


def _ink_items(x: np.ndarray, rng, n: int) -> np.ndarray:
    """``n`` random Fashion-MNIST test indices (items always have ink)."""
    return rng.integers(0, len(x), size=n)


def count_task(size: int, n_per_class: int = 100, seed: int = 0, *, max_count: int = 6, grid: int = 3,
               fashion_root: str | None = None) -> VisionTask:
    """Canvases with k = 1..max_count items at distinct cells of a grid x grid layout; label = k - 1."""
    if not 1 <= max_count <= grid * grid:
        raise ProbekitError(f"max_count {max_count} must be between 1 and the {grid * grid} cells of the grid")
    x, _ = _fashion_test(fashion_root)
    rng = np.random.default_rng(seed + 202)
    boxes, side = cell_boxes(size, grid), item_side(size, grid)
    n = n_per_class * max_count
    imgs = np.zeros((n, size, size), np.uint8)
    cells = np.zeros((n, grid * grid), bool)
    srcs = np.full((n, max_count), -1)
    labels = np.repeat(np.arange(max_count), n_per_class)
    for j, lab in enumerate(labels):
        k = lab + 1
        where = rng.choice(grid * grid, size=k, replace=False)
        items = _ink_items(x, rng, k)
        for c, it in zip(where, items):
            place(imgs[j], x[it], boxes[c], side)
        cells[j, where] = True
        srcs[j, :k] = items
    return VisionTask("count", [str(k) for k in range(1, max_count + 1)], imgs, labels, "Fashion-MNIST test split",
                      cells=cells, grid=grid, sources=srcs,
                      spec={"n_per_class": n_per_class, "seed": seed, "max_count": max_count, "grid": grid})


def position_task(size: int, n_per_class: int = 100, seed: int = 0, *, grid: int = 3,
                  fashion_root: str | None = None) -> VisionTask:
    """One item in one cell of a grid x grid layout; label = the cell (row-major)."""
    x, _ = _fashion_test(fashion_root)
    rng = np.random.default_rng(seed + 303)
    boxes, side = cell_boxes(size, grid), item_side(size, grid)
    n = n_per_class * grid * grid
    imgs = np.zeros((n, size, size), np.uint8)
    labels = np.repeat(np.arange(grid * grid), n_per_class)
    items = _ink_items(x, rng, n)
    for j, (c, it) in enumerate(zip(labels, items)):
        place(imgs[j], x[it], boxes[c], side)
    cells = np.zeros((n, grid * grid), bool)
    cells[np.arange(n), labels] = True
    return VisionTask("position", cell_names(grid), imgs, labels, "Fashion-MNIST test split", cells=cells, grid=grid,
                      sources=items[:, None], spec={"n_per_class": n_per_class, "seed": seed, "grid": grid})


def reading_task(size: int, n_per_class: int | None = 100, seed: int = 0) -> VisionTask:
    """Held-out handwritten digits (never trained on by the organisms) upscaled to ``size``; label = digit."""
    from ...data import digits_split

    dx, dy = load_digits_arrays()
    _, held = digits_split()
    pick = held[_pick_per_class(dy[held], n_per_class, np.random.default_rng(seed + 404))]
    imgs = np.stack([resize(dx[i], size) for i in pick])
    return VisionTask("reading", list(DIGIT_CLASSES), imgs, dy[pick], "scikit-learn digits, held-out third",
                      sources=pick[:, None], spec={"n_per_class": n_per_class, "seed": seed})


def build_tasks(size: int, n_per_class: int = 100, seed: int = 0, tasks: Sequence[str] = TASKS, *,
                max_count: int = 6, count_grid: int = 3, position_grid: int = 3,
                fashion_root: str | None = None) -> dict[str, VisionTask]:
    """The tasks by name, each ``n_per_class`` images per class at ``size`` x ``size`` (seeded);
    ``fashion_root``: a folder with Fashion-MNIST's IDX files (default: the Debian package's)."""
    r = str(fashion_root) if fashion_root else None
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ProbekitError(f"unknown task(s) {unknown}; tasks are {', '.join(TASKS)}")
    make = {
        "class": lambda: class_task(size, n_per_class, seed, fashion_root=r),
        "count": lambda: count_task(size, n_per_class, seed, max_count=max_count, grid=count_grid, fashion_root=r),
        "position": lambda: position_task(size, n_per_class, seed, grid=position_grid, fashion_root=r),
        "reading": lambda: reading_task(size, n_per_class, seed),
    }
    return {t: make[t]() for t in tasks}


__all__ = ["TASKS", "TASK_TITLES", "VisionTask", "build_tasks", "cell_boxes", "cell_names", "class_task",
           "count_task", "item_side", "model_image_size", "place", "position_task", "reading_task"]
