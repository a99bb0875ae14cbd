"""Task builders of chapter 06: exact labels (counts, cells), seeded, sized, held-out sources."""

import numpy as np
import pytest

from probekit.data import digits_split
from probekit.errors import ProbekitError
from probekit.papers.c_layer_selection.tasks import (
    TASKS,
    build_tasks,
    cell_boxes,
    count_task,
    item_side,
    model_image_size,
    position_task,
    reading_task,
)


def ink_cells(img, size, grid):
    return np.array([img[y0:y1, x0:x1].max() > 0 for y0, y1, x0, x1 in cell_boxes(size, grid)])


@pytest.mark.parametrize("size,grid,k", [(28, 2, 4), (56, 2, 3), (30, 2, 4), (28, 3, 6), (28, 3, 9)])
def test_count_labels_are_exact(size, grid, k):
    t = count_task(size, n_per_class=15, seed=3, grid=grid, max_count=k)
    assert t.images.shape == (15 * k, size, size) and t.images.dtype == np.uint8
    assert t.classes == [str(i) for i in range(1, k + 1)] and np.bincount(t.labels).tolist() == [15] * k
    for img, lab, cells in zip(t.images, t.labels, t.cells):
        occupied = ink_cells(img, size, grid)
        assert occupied.sum() == lab + 1 == cells.sum()  # k items, each in its own cell, ink never leaves a cell
        np.testing.assert_array_equal(occupied, cells)


@pytest.mark.parametrize("size,grid", [(28, 3), (28, 2), (64, 3)])
def test_position_labels_are_exact(size, grid):
    t = position_task(size, n_per_class=6, seed=1, grid=grid)
    assert len(t.classes) == grid * grid and len(t) == 6 * grid * grid
    for img, lab in zip(t.images, t.labels):
        occupied = ink_cells(img, size, grid)
        assert occupied.sum() == 1 and occupied[lab]
    # one item size for every cell: the ink's extent does not tell the cell
    side = item_side(size, grid)
    for img in t.images:
        ys, xs = np.nonzero(img)
        assert np.ptp(ys) < side and np.ptp(xs) < side


def test_tasks_are_seeded_and_sized():
    a = build_tasks(28, n_per_class=4, seed=0)
    b = build_tasks(28, n_per_class=4, seed=0)
    c = build_tasks(28, n_per_class=4, seed=1)
    assert list(a) == list(TASKS)
    for k in TASKS:
        np.testing.assert_array_equal(a[k].images, b[k].images)
        np.testing.assert_array_equal(a[k].labels, b[k].labels)
        assert a[k].identity() == b[k].identity() and a[k].identity() != c[k].identity()
        assert a[k].images.shape[1:] == (28, 28) and np.bincount(a[k].labels).min() == 4
        assert a[k].pil(0).size == (28, 28) and a[k].pil(0).mode == "RGB"
    big = build_tasks(56, n_per_class=2, seed=0, tasks=["class", "reading"])
    assert big["class"].images.shape[1:] == (56, 56) and big["reading"].size == 56
    with pytest.raises(ProbekitError, match="unknown task"):
        build_tasks(28, tasks=["ocr"])
    with pytest.raises(ProbekitError, match="max_count"):
        count_task(28, 2, max_count=5, grid=2)
    assert build_tasks(28, 2, tasks=["count"])["count"].classes == [str(i) for i in range(1, 7)]  # default 1..6, 3x3


def test_reading_uses_held_out_digits_only():
    t = reading_task(28, n_per_class=20, seed=0)
    _, held = digits_split()
    assert set(t.sources[:, 0]) <= set(held.tolist())
    assert sorted(set(t.labels.tolist())) == list(range(10))


def test_model_image_size_from_the_processor(tiny_models):
    for fam, lm in tiny_models.items():
        assert model_image_size(lm.processor) == 28, fam

    class Dynamic:  # a Qwen2-VL-like budget wider than one size
        size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
        patch_size, merge_size = 14, 2

    assert model_image_size(Dynamic()) == 224
    assert model_image_size(Dynamic(), dynamic_default=40) == 56
