"""Paper C (arXiv 2504.21447): layer-wise representation similarity (LRS) inside the vision encoder, and
its contiguous shallow / middle / deep groups.

Layer numbering follows paper C's official code: layer ``k`` is the vision tower's ``hidden_states[k]``
(0 = patch embeddings, 1..V = blocks); CLS/register tokens are dropped. LRS between layers ``i`` and ``j`` is
the cosine similarity of one patch token's representation at ``i`` and at ``j``, averaged over the patch
tokens of an image and then over images.

Beyond LRS and the groups, this module holds the probe side of the chapter (paper C's question asked with
linear probes instead of retrained MLLMs):

* :func:`patch_positions` — where each patch token sits in the image (row, column in [0, 1]), per family;
* :func:`extract_vision_features` — one pass over the images giving, per layer, the mean-pooled patch tokens,
  a spatially pooled ``grid x grid`` of patch tokens (so *where* survives pooling) and the LRS sum;
* :func:`representative_layers` — one layer per group for the fusion (default: each group's last layer);
* :func:`probe_layers` — one linear probe per layer (``LayerProbes``) and one on the fusion (the
  representative layers concatenated), held-out accuracy with bootstrap CIs, all on the same split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import ProbekitError
from ...models import LoadedModel


def _vision_batches(lm: LoadedModel, images: Sequence, batch_size: int):
    """Per batch: ``(image-processor outputs on the CPU, one state [V+1, patches, d] per image)``."""
    for b in range(0, len(images), batch_size):
        inputs = lm.processor.image_processor(images=list(images[b : b + batch_size]), return_tensors="pt")
        with torch.inference_mode():
            states = lm.adapter.vision_hidden_states(lm.model, {k: v.to(lm.device) for k, v in inputs.items()})
        yield inputs, states


def vision_states(lm: LoadedModel, images: Sequence, *, batch_size: int = 8) -> Iterable[torch.Tensor]:
    """Per image (in order), the vision tower's states ``[V+1, patches, d]`` as float32 on the CPU."""
    for _, states in _vision_batches(lm, images, batch_size):
        for h in states:
            yield h.float().cpu()


def layer_similarity(lm: LoadedModel, images: Sequence, *, batch_size: int = 8) -> np.ndarray:
    """LRS matrix ``[V+1, V+1]``: mean over images of the mean over patch tokens of cos(h_i, h_j)."""
    if len(images) == 0:
        raise ProbekitError("layer_similarity needs at least one image")
    total = None
    for h in vision_states(lm, images, batch_size=batch_size):
        s = _lrs(h)
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


# ---- where patch tokens sit -----------------------------------------------------------------------------


def patch_positions(lm: LoadedModel, image_inputs: dict) -> list[np.ndarray]:
    """Per image, the centre of each patch token of :func:`vision_states` as ``[T, 2]`` (row, column) in
    ``[0, 1)`` of the image, NaN where a token has no single place in the image frame.

    CLIP-style towers (LLaVA): row-major over the ``H/p x W/p`` grid. LLaVA-NeXT: the base (global) view's
    tokens row-major; its high-resolution tiles get NaN (they enter the mean, not the spatial grid).
    Qwen2-VL / Qwen2.5-VL: the processor's order, ``merge x merge`` blocks row-major and row-major inside a
    block, repeated over the temporal patches (the Qwen2.5-VL adapter undoes the window permutation).
    """
    fam = lm.adapter.family
    if fam in ("qwen2_vl", "qwen2_5_vl"):
        vc = lm.model.config.vision_config
        m = int(getattr(vc, "spatial_merge_size", 2))
        out = []
        for t, h, w in image_inputs["image_grid_thw"].tolist():
            rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            rr = rr.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).ravel()
            cc = cc.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).ravel()
            pos = np.stack([(rr + 0.5) / h, (cc + 0.5) / w], 1)
            out.append(np.tile(pos, (t, 1)))
        return out
    patch = int(lm.model.config.vision_config.patch_size)
    pv = image_inputs["pixel_values"]
    gh, gw = pv.shape[-2] // patch, pv.shape[-1] // patch
    rr, cc = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    base = np.stack([(rr.ravel() + 0.5) / gh, (cc.ravel() + 0.5) / gw], 1)
    if fam == "llava_next":
        from transformers.models.llava_next.modeling_llava_next import (
            image_size_to_num_patches,
        )

        cfg = lm.model.config
        out = []
        for size in image_inputs["image_sizes"]:
            n = image_size_to_num_patches(size.tolist(), cfg.image_grid_pinpoints, cfg.vision_config.image_size)
            out.append(np.concatenate([base, np.full(((n - 1) * len(base), 2), np.nan)]))
        return out
    return [base] * len(pv)


def grid_pool(h: torch.Tensor, pos: np.ndarray, grid: int) -> torch.Tensor:
    """``h`` [L, T, d] -> [L, grid*grid*d]: the mean of the tokens whose centre falls in each cell of a
    ``grid x grid`` partition of the image (row-major; a cell without tokens gives zeros)."""
    cell = np.floor(np.nan_to_num(pos, nan=-1.0) * grid).astype(int)
    ok = (cell >= 0).all(1) & (cell < grid).all(1)
    ids = np.where(ok, cell[:, 0] * grid + cell[:, 1], grid * grid)
    onehot = torch.zeros(grid * grid + 1, h.shape[1], dtype=h.dtype)
    onehot[torch.from_numpy(ids), torch.arange(h.shape[1])] = 1.0
    onehot = onehot[:-1]
    weights = onehot / onehot.sum(1, keepdim=True).clamp(min=1.0)
    return torch.einsum("ct,ltd->lcd", weights, h).reshape(h.shape[0], -1)


# ---- one pass: pooled features per layer and LRS --------------------------------------------------------


@dataclass
class VisionFeatures:
    """Per image and vision layer (0 = patch embeddings .. V): ``mean`` [n, V+1, d] (mean over patch tokens)
    and ``grid`` [n, V+1, grid*grid*d] (mean inside each cell of a grid x grid partition, row-major);
    ``lrs`` [V+1, V+1] the LRS over these images."""

    mean: np.ndarray
    grid: np.ndarray
    lrs: np.ndarray
    grid_size: int

    FEATURE_SETS = ("mean", "grid", "mean+grid")

    def __len__(self) -> int:
        return len(self.mean)

    @property
    def n_layers(self) -> int:
        return self.mean.shape[1]

    def features(self, kind: str = "mean+grid") -> np.ndarray:
        """``mean``, ``grid`` or ``mean+grid`` (concatenated on the feature axis) as ``[n, V+1, d']``."""
        if kind == "mean":
            return self.mean
        if kind == "grid":
            return self.grid
        if kind == "mean+grid":
            return np.concatenate([self.mean, self.grid], -1)
        raise ProbekitError(f"unknown feature set {kind!r}; use one of {', '.join(self.FEATURE_SETS)}")

    def subset(self, idx) -> "VisionFeatures":
        return VisionFeatures(self.mean[idx], self.grid[idx], self.lrs, self.grid_size)


def extract_vision_features(lm: LoadedModel, images: Sequence, *, grid: int = 2, batch_size: int = 16,
                            progress=None) -> VisionFeatures:
    """One forward pass of the vision tower per batch: pooled features per layer and the LRS matrix.
    ``progress``: optional callable ``(done, total)``."""
    if len(images) == 0:
        raise ProbekitError("extract_vision_features needs at least one image")
    means, grids, total = [], [], None
    for b, (inputs, states) in zip(range(0, len(images), batch_size), _vision_batches(lm, images, batch_size)):
        positions = patch_positions(lm, inputs)
        if len(states) != len(positions):
            raise ProbekitError(f"{len(states)} images of states but {len(positions)} of patch positions")
        for h, pos in zip(states, positions):
            h = h.float().cpu()
            if h.shape[1] != len(pos):
                raise ProbekitError(f"{h.shape[1]} patch tokens but {len(pos)} patch positions "
                                    f"({lm.adapter.family}); the adapter and patch_positions disagree")
            s = _lrs(h)
            total = s if total is None else total + s
            means.append(h.mean(1))
            grids.append(grid_pool(h, pos, grid))
        if progress is not None:
            progress(min(b + batch_size, len(images)), len(images))
    return VisionFeatures(torch.stack(means).numpy(), torch.stack(grids).numpy(),
                          (total / len(images)).double().numpy(), grid)


def _lrs(h: torch.Tensor) -> torch.Tensor:
    hn = torch.nn.functional.normalize(h, dim=-1)  # [V+1, T, d]
    return torch.einsum("itd,jtd->ij", hn, hn) / h.shape[1]


# ---- fusion and probes ----------------------------------------------------------------------------------

GROUP_NAMES = ("shallow", "middle", "deep")


def group_names(n_groups: int) -> list[str]:
    """shallow / middle / deep for 3 groups (shallow / deep for 2, as for a 2-block tower); else numbered."""
    if n_groups == 3:
        return list(GROUP_NAMES)
    if n_groups == 2:
        return ["shallow", "deep"]
    return [f"group {i + 1}" for i in range(n_groups)]


def representative_layers(groups: Sequence[range], rule: str = "last") -> list[int]:
    """One layer per group for the fusion: ``last`` (the group's last layer: the most processed state of that
    kind of representation), ``middle`` (its middle layer) or ``first``."""
    pick = {"last": lambda g: g[-1], "middle": lambda g: g[(len(g) - 1) // 2], "first": lambda g: g[0]}
    if rule not in pick:
        raise ProbekitError(f"unknown fusion rule {rule!r}; use one of {', '.join(pick)}")
    return [int(pick[rule](g)) for g in groups]


def layer_group(layer: int, groups: Sequence[range]) -> str:
    names = group_names(len(groups))
    for name, g in zip(names, groups):
        if layer in g:
            return name
    return "embeddings" if layer == 0 else "—"


def probe_layers(X: np.ndarray, y: np.ndarray, *, fusion: Sequence[int] | None = None, test_size: float = 0.3,
                 seed: int = 0, C: float = 1.0, n_boot: int = 1000, task: str | None = None):
    """Held-out accuracy of one linear probe per layer of ``X`` [n, L, d], and of one probe on the fusion
    (layers ``fusion`` concatenated on the feature axis), on one stratified split, with percentile-bootstrap
    95 % CIs over the held-out images. Returns a DataFrame with rows ``layer`` 0..L-1 (``kind='layer'``)
    and, if ``fusion`` is given, one row ``kind='fusion'`` (``layer`` = -1, ``layers`` = the fused ones)."""
    import pandas as pd

    from ...probes import LayerProbes, split_items
    from ...stats import bootstrap_ci

    y = np.asarray(y)
    tr, te = split_items(y, test_size=test_size, seed=seed)
    probes = LayerProbes(C=C, seed=seed).fit(X[tr], y[tr])
    correct = probes.predict(X[te]) == y[te][:, None]
    cols = [correct]
    if fusion:
        Xf = X[:, list(fusion)].reshape(len(X), 1, -1)
        fp = LayerProbes(C=C, seed=seed).fit(Xf[tr], y[tr])
        cols.append(fp.predict(Xf[te]) == y[te][:, None])
    correct = np.concatenate(cols, 1)
    acc, lo, hi = bootstrap_ci(correct, n_boot=n_boot, seed=seed)
    chance = float(np.bincount(y[te]).max() / len(te))
    rows = []
    for i in range(X.shape[1] + (1 if fusion else 0)):
        fused = i == X.shape[1]
        rows.append({"task": task, "kind": "fusion" if fused else "layer", "layer": -1 if fused else i,
                     "layers": "+".join(map(str, fusion)) if fused else str(i), "accuracy": float(acc[i]),
                     "ci_low": float(lo[i]), "ci_high": float(hi[i]), "chance": chance, "n_train": len(tr),
                     "n_test": len(te), "n_features": int(X.shape[2] * (len(fusion) if fused else 1))})
    df = pd.DataFrame(rows)
    df.attrs["correct"] = correct  # [n_test, rows]: per held-out image, right or wrong, in row order
    return df
