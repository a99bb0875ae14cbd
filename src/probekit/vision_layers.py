"""Paper C (arXiv 2504.21447): layer-wise representation similarity (LRS) inside the vision encoder, and
its contiguous shallow / middle / deep groups.

Layer numbering follows paper C's official code: layer ``k`` is the vision tower's ``hidden_states[k]``
(0 = patch embeddings, 1..V = blocks); CLS/register tokens are dropped. LRS between layers ``i`` and ``j`` is
the cosine similarity of one patch token's representation at ``i`` and at ``j``, averaged over the patch
tokens of an image and then over images.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .errors import ProbekitError
from .models import LoadedModel


def vision_states(lm: LoadedModel, images: Sequence, *, batch_size: int = 8) -> Iterable[torch.Tensor]:
    """Per image (in order), the vision tower's states ``[V+1, patches, d]`` as float32 on the CPU."""
    for b in range(0, len(images), batch_size):
        inputs = lm.processor.image_processor(images=list(images[b : b + batch_size]), return_tensors="pt")
        inputs = {k: v.to(lm.device) for k, v in inputs.items()}
        with torch.inference_mode():
            for h in lm.adapter.vision_hidden_states(lm.model, inputs):
                yield h.float().cpu()


def layer_similarity(lm: LoadedModel, images: Sequence, *, batch_size: int = 8) -> np.ndarray:
    """LRS matrix ``[V+1, V+1]``: mean over images of the mean over patch tokens of cos(h_i, h_j)."""
    if len(images) == 0:
        raise ProbekitError("layer_similarity needs at least one image")
    total = None
    for h in vision_states(lm, images, batch_size=batch_size):
        hn = torch.nn.functional.normalize(h, dim=-1)  # [V+1, T, d]
        s = torch.einsum("itd,jtd->ij", hn, hn) / h.shape[1]
        total = s if total is None else total + s
    return (total / len(images)).double().numpy()


def group_layers(similarity: np.ndarray, n_groups: int = 3, *, first: int = 1, min_size: int = 1) -> list[range]:
    """Cut layers ``first..V`` into ``n_groups`` contiguous groups (shallow, middle, deep for 3).

    Each layer is described by its row of the similarity matrix (its similarity to every layer); the cut
    minimises the within-group sum of squared distances of those rows to their group mean — the optimal
    contiguous segmentation (Fisher 1958), found exactly by dynamic programming. Layers that represent
    alike have alike rows, so blocks of mutually similar layers become groups. Returns ``range`` objects
    of layer indices.
    """
    S = np.asarray(similarity, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ProbekitError(f"similarity must be a square matrix, got shape {S.shape}")
    X = S[first:]  # rows of the layers to group
    n = len(X)
    if not 1 <= n_groups <= n // max(min_size, 1):
        raise ProbekitError(f"cannot cut {n} layers into {n_groups} groups of at least {min_size}")
    # cost[a, b]: within-segment sum of squares of rows a..b-1, from prefix sums
    c1 = np.vstack([np.zeros(X.shape[1]), np.cumsum(X, 0)])
    c2 = np.concatenate([[0.0], np.cumsum((X**2).sum(1))])

    def cost(a, b):
        m = b - a
        return c2[b] - c2[a] - ((c1[b] - c1[a]) ** 2).sum() / m

    best = np.full((n_groups + 1, n + 1), np.inf)
    arg = np.zeros((n_groups + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for g in range(1, n_groups + 1):
        for b in range(g * min_size, n + 1):
            for a in range((g - 1) * min_size, b - min_size + 1):
                v = best[g - 1, a] + cost(a, b)
                if v < best[g, b] - 1e-12:
                    best[g, b], arg[g, b] = v, a
    cuts, b = [], n
    for g in range(n_groups, 0, -1):
        a = arg[g, b]
        cuts.append(range(a + first, b + first))
        b = a
    return cuts[::-1]
