import numpy as np
import pytest
import torch
from conftest import FAMILIES

from probekit.errors import ProbekitError
from probekit.papers.c_layer_selection.analysis import (
    group_layers,
    layer_similarity,
    vision_states,
)


def planted(sizes, within=0.9, between=0.3, noise=0.02, seed=0):
    """A block-structured similarity matrix over layers 0..V (layer 0 = embeddings, its own block)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([[-1]] + [[g] * s for g, s in enumerate(sizes)])
    S = np.where(labels[:, None] == labels[None, :], within, between) + rng.normal(0, noise, (len(labels),) * 2)
    S = (S + S.T) / 2
    np.fill_diagonal(S, 1.0)
    return S


@pytest.mark.parametrize("sizes", [(12, 8, 4), (4, 4, 4), (1, 10, 2), (7, 3, 14)])
def test_planted_blocks_are_recovered_exactly(sizes):
    cuts = group_layers(planted(sizes))
    starts = np.cumsum((1,) + sizes[:-1])
    assert cuts == [range(s, s + n) for s, n in zip(starts, sizes)]


def test_clip_like_gradient_with_min_size_and_other_group_counts():
    # a smooth decay plus a sharp break: the break must be one of the cuts
    V = 24
    i = np.arange(V + 1)
    S = np.exp(-np.abs(i[:, None] - i[None, :]) / 6.0)
    S[:13, 13:] *= 0.3
    S[13:, :13] *= 0.3
    cuts = group_layers(S, 3)
    assert any(c.start == 13 for c in cuts)
    assert [len(c) for c in group_layers(S, 4, min_size=3)] and all(len(c) >= 3 for c in group_layers(S, 4, min_size=3))
    assert group_layers(S, 1) == [range(1, V + 1)]
    with pytest.raises(ProbekitError, match="cannot cut"):
        group_layers(S, 30)


@pytest.mark.parametrize("family", FAMILIES)
def test_lrs_on_every_supported_class(family, tiny_models, fashion):
    lm = tiny_models[family]
    images = [fashion[i][0] for i in range(3)]
    states = list(vision_states(lm, images, batch_size=2))
    V = lm.model.config.vision_config.num_hidden_layers if hasattr(lm.model.config.vision_config, "num_hidden_layers") \
        else lm.model.config.vision_config.depth
    assert len(states) == 3 and all(h.shape[0] == V + 1 for h in states)
    S = layer_similarity(lm, images, batch_size=2)
    assert S.shape == (V + 1, V + 1)
    np.testing.assert_allclose(np.diag(S), 1.0, atol=1e-5)
    np.testing.assert_allclose(S, S.T, atol=1e-6)
    # the average really is over images: one image's matrix differs from the mean of three
    assert not np.allclose(layer_similarity(lm, images[:1]), S)
    # CLS-free patch tokens: as many as the image processor makes patches (llava: (28/7)^2 = 16)
    if family == "llava":
        assert states[0].shape[1] == 16
    assert torch.isfinite(states[0]).all()


# ---- patch positions, pooled features, probes (chapter 06) ------------------------------------------------

from PIL import Image  # noqa: E402

from probekit.papers.c_layer_selection.analysis import (  # noqa: E402
    extract_vision_features,
    grid_pool,
    patch_positions,
    probe_layers,
    representative_layers,
)
from probekit.papers.c_layer_selection.tasks import cell_boxes  # noqa: E402


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
    import dataclasses

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


def test_representative_layers():
    groups = [range(1, 13), range(13, 21), range(21, 25)]
    assert representative_layers(groups) == [12, 20, 24]
    assert representative_layers(groups, "first") == [1, 13, 21]
    assert representative_layers(groups, "middle") == [6, 16, 22]
    with pytest.raises(ProbekitError, match="fusion rule"):
        representative_layers(groups, "best")


def test_probe_layers_finds_the_informative_layer_and_fuses():
    rng = np.random.default_rng(0)
    n, d = 240, 8
    y = np.arange(n) % 3
    X = rng.normal(size=(n, 4, d))
    X[:, 2, :3] += 3 * np.eye(3)[y]  # layer 2 carries the label
    df = probe_layers(X, y, fusion=[1, 2, 3], seed=0, n_boot=200, task="t")
    lay = df[df.kind == "layer"].set_index("layer")
    assert lay.accuracy.idxmax() == 2 and lay.accuracy[2] > 0.9 and lay.accuracy[0] < 0.6
    fus = df[df.kind == "fusion"].iloc[0]
    assert fus.layers == "1+2+3" and fus.n_features == 3 * d and fus.accuracy > 0.85
    assert (df.ci_low <= df.accuracy).all() and (df.accuracy <= df.ci_high).all()
    assert df.n_test.nunique() == 1  # one split for every layer and the fusion


def test_extract_vision_features_matches_layer_similarity(tiny_models, fashion):
    lm = tiny_models["qwen2_vl"]
    images = [fashion[i][0] for i in range(4)]
    f = extract_vision_features(lm, images, grid=2, batch_size=3)
    V1 = f.n_layers
    assert f.mean.shape[:2] == (4, V1) and f.grid.shape[2] == 4 * f.mean.shape[2]
    assert f.features("mean+grid").shape[2] == 5 * f.mean.shape[2]
    np.testing.assert_allclose(f.lrs, layer_similarity(lm, images, batch_size=2), atol=1e-5)
    states = list(vision_states(lm, images))
    np.testing.assert_allclose(f.mean[1], states[1].mean(1).numpy(), atol=1e-5)
    # the 4 grid cells' mean of a 2x2 grid over equal-size cells is the token mean
    np.testing.assert_allclose(f.grid[1].reshape(V1, 4, -1).mean(1), f.mean[1], atol=1e-5)
    with pytest.raises(ProbekitError, match="feature set"):
        f.features("cls")
