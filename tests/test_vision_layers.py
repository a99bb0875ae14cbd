import numpy as np
import pytest
import torch

from conftest import FAMILIES
from probekit.errors import ProbekitError
from probekit.vision_layers import group_layers, layer_similarity, vision_states


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
