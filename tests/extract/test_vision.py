"""probekit.extract.vision (paper C): the vision tower's per-layer states, where each patch token sits, the pooled
features and per-image LRS written into an ActivationStore (cached, resumable, never mixed)."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import FAMILIES
from PIL import Image

from probekit.errors import StoreError
from probekit.extract import vision as xv
from probekit.extract.vision import (
    extract_vision,
    grid_pool,
    patch_positions,
    token_similarity,
    vision_states,
)
from probekit.papers.c_layer_selection.analysis import mean_similarity
from probekit.papers.c_layer_selection.tasks import cell_boxes
from probekit.store import ActivationStore


def n_vision_layers(lm):
    vc = lm.model.config.vision_config
    return vc.num_hidden_layers if hasattr(vc, "num_hidden_layers") else vc.depth


@pytest.mark.parametrize("family", FAMILIES)
def test_states_and_lrs_on_every_supported_class(family, tiny_models, fashion):
    lm = tiny_models[family]
    images = [fashion[i][0] for i in range(3)]
    states = list(vision_states(lm, images, batch_size=2))
    V = n_vision_layers(lm)
    assert len(states) == 3 and all(h.shape[0] == V + 1 for h in states)
    per_image = np.stack([token_similarity(h).numpy() for h in states])
    S = mean_similarity(per_image)
    assert S.shape == (V + 1, V + 1)
    np.testing.assert_allclose(np.diag(S), 1.0, atol=1e-5)
    np.testing.assert_allclose(S, S.T, atol=1e-6)
    # the average really is over images: one image's matrix differs from the mean of three
    assert not np.allclose(mean_similarity(per_image[:1]), S)
    # CLS-free patch tokens: as many as the image processor makes patches (llava: (28/7)^2 = 16)
    if family == "llava":
        assert states[0].shape[1] == 16
    assert torch.isfinite(states[0]).all()


def changed_tokens_match_cells(lm, size, grid):
    """Perturb one cell of a blank image: at layer 0 (token-local: patch embedding [+ position]) exactly the
    tokens whose centre patch_positions puts in that cell change. Returns the cells where this fails."""
    bad = []
    for cell, (y0, y1, x0, x1) in enumerate(cell_boxes(size, grid)):
        blank = np.zeros((size, size), np.uint8)
        obj = blank.copy()
        obj[y0:y1, x0:x1] = 200
        inputs = lm.processor.image_processor(images=[Image.fromarray(a).convert("RGB") for a in (blank, obj)],
                                              return_tensors="pt")
        pos = patch_positions(lm, inputs)
        states = lm.adapter.vision_hidden_states(lm.model, inputs)
        changed = ((states[0][0] - states[1][0]).abs().amax(-1) > 1e-5).numpy()
        c = np.floor(np.nan_to_num(pos[0], nan=-1) * grid).astype(int)
        want = (c[:, 0] * grid + c[:, 1] == cell) & (c >= 0).all(1)
        keep = np.isfinite(pos[0][:, 0])  # llava-next: only the base view has a place in the image
        if not np.array_equal(changed[keep], want[keep]):
            bad.append(cell)
    return bad


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_positions_match_the_image(family, tiny_models):
    lm = tiny_models[family]
    assert changed_tokens_match_cells(lm, 28, 4) == []  # 4x4 cells = every 7-px patch on its own
    assert changed_tokens_match_cells(lm, 28, 2) == []


def test_qwen2_5_window_order_is_undone(tmp_path):
    """At 112 px Qwen2.5-VL's tower splits the patches into 4 attention windows and permutes them; the
    adapter's states must come back in the processor's order, or the spatial grid would be scrambled."""
    from probekit.models import load_model
    from probekit.models.build import build_tiny
    from probekit.models.qwen2_vl import Qwen2VLAdapter

    d = build_tiny("qwen2_5_vl", tmp_path / "q25", seed=0, text_layers=1, image_size=112, patch_size=7)
    lm = load_model(str(d), dtype="float32", device="cpu")
    assert lm.model.config.vision_config.window_size < 112
    assert changed_tokens_match_cells(lm, 112, 4) == []

    # the same tower read without undoing the permutation (Qwen2-VL's path) fails the check: the test has teeth
    class Unpermuted(type(lm.adapter)):
        def vision_hidden_states(self, model, image_inputs):
            return Qwen2VLAdapter.vision_hidden_states(self, model, image_inputs)

    assert changed_tokens_match_cells(dataclasses.replace(lm, adapter=Unpermuted()), 112, 4) != []


def test_grid_pool_averages_inside_cells():
    h = torch.arange(2 * 4 * 1, dtype=torch.float32).reshape(2, 4, 1)  # 2 layers, 4 tokens on a 2x2 patch grid
    pos = np.array([[0.25, 0.25], [0.25, 0.75], [0.75, 0.25], [0.75, 0.75]])
    out = grid_pool(h, pos, 2)
    torch.testing.assert_close(out, h[:, :, 0])  # one token per cell
    out1 = grid_pool(h, pos, 1)
    torch.testing.assert_close(out1, h.mean(1))
    pos_nan = pos.copy()
    pos_nan[3] = np.nan  # a token without a place enters no cell
    out = grid_pool(h, pos_nan, 2)
    assert out[0, 3] == 0 and out[0, 0] == 0 and out[1, 2] == 6


def test_extract_vision_store_cache_resume_and_never_mixed(tiny_models, fashion, tmp_path, monkeypatch):
    lm = tiny_models["qwen2_vl"]
    images = [fashion[i][0] for i in range(5)]
    monkeypatch.setattr(xv, "SHARD_SIZE", 2)  # 3 shards
    store = extract_vision(lm, images, tmp_path / "s", grid=2, labels=[0, 1, 0, 1, 0], classes=["a", "b"],
                           batch_size=3)
    V1 = n_vision_layers(lm) + 1
    mean, grid, lrs = store.array("mean"), store.array("grid"), store.array("lrs")
    d = mean.shape[2]
    assert mean.shape == (5, V1, d) and grid.shape == (5, V1, 4 * d) and lrs.shape == (5, V1, V1)
    assert len(store.shard_ranges()) == 3 and store.is_complete() and store.classes == ["a", "b"]
    ex = store.extra
    assert ex["vision_layers"] == V1 - 1 and ex["default_layer"] == V1 - 1 and ex["image_size"] == 28
    assert ex["grid"] == 2 and ex["vision_config"].endswith("Config") and store.key["model"] == lm.identity()
    states = list(vision_states(lm, images))
    np.testing.assert_allclose(mean[1], states[1].mean(1).numpy(), atol=1e-5)
    np.testing.assert_allclose(lrs[3], token_similarity(states[3]).numpy(), atol=1e-5)
    # the 4 grid cells' mean of a 2x2 grid over equal-size cells is the token mean
    np.testing.assert_allclose(grid[1].reshape(V1, 4, -1).mean(1), mean[1], atol=1e-5)
    # LRS over images: the float32 sum in image order, divided by n; within float32 rounding of the exact mean
    np.testing.assert_allclose(mean_similarity(lrs), lrs.astype(np.float64).mean(0), atol=1e-6)

    def no_model(*a, **k):
        raise AssertionError("the vision tower ran")

    with monkeypatch.context() as m:  # complete: returned without running the tower
        m.setattr(lm.adapter, "vision_hidden_states", no_model)
        again = extract_vision(lm, images, tmp_path / "s", grid=2, labels=[0, 1, 0, 1, 0], classes=["a", "b"])
    np.testing.assert_array_equal(again.array("grid"), grid)
    store.shard_path(1).unlink()  # resume: only the missing shard is computed, and it is the same
    calls = []
    real = type(lm.adapter).vision_hidden_states

    def counted(model, inputs):
        calls.append(len(inputs["image_grid_thw"]))
        return real(lm.adapter, model, inputs)

    with monkeypatch.context() as m:
        m.setattr(lm.adapter, "vision_hidden_states", counted)
        resumed = extract_vision(lm, images, tmp_path / "s", grid=2, labels=[0, 1, 0, 1, 0], classes=["a", "b"],
                                 batch_size=3)
    assert calls == [1, 2]  # the shape probe (one image), then the missing shard's two images
    np.testing.assert_array_equal(resumed.array("mean"), mean)
    np.testing.assert_array_equal(ActivationStore.open(tmp_path / "s").array("lrs"), lrs)
    with pytest.raises(StoreError, match="different settings"):  # another pooling: never mixed into this store
        extract_vision(lm, images, tmp_path / "s", grid=1)
