"""Paper C (arXiv 2504.21447): the vision tower's states at every layer, pooled per image, into a store.

Layer numbering follows paper C's official code: layer ``k`` is the vision tower's ``hidden_states[k]``
(0 = patch embeddings, 1..V = blocks); CLS/register tokens are dropped (the adapter's
``vision_hidden_states``). Per image, :func:`extract_vision` stores three named arrays
(:class:`~probekit.store.ActivationStore`, cached by a key, atomic, resumable):

- ``mean`` ``[V+1, d]``: the mean over the patch tokens at each layer;
- ``grid`` ``[V+1, g*g*d]``: a spatially pooled ``g x g`` grid at each layer (:func:`grid_pool`: each cell the
  mean of the patch tokens whose centre lies in it, row-major; where each token sits comes from the adapter's
  ``patch_positions``), so *where* survives pooling;
- ``lrs`` ``[V+1, V+1]``: the image's layer-wise representation similarity, the cosine similarity of a patch
  token's state at layer ``i`` and at layer ``j`` averaged over the image's patch tokens
  (:func:`token_similarity`).

LRS is the one quantity that needs every token's state at every layer at once; it is computed here, per image,
because storing the token states instead would cost ``(V+1) x T x d`` floats per image (CLIP ViT-L/14-336:
25 x 576 x 1024, 59 MB) against ``(V+1)²`` (2.5 kB). Averaging over images is the analysis' part
(:func:`probekit.papers.c_layer_selection.analysis.mean_similarity`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, ProbekitError
from ..models import LoadedModel
from ..store import ActivationStore
from .runtime import image_items, no_grad_eval, pixels_sha256

VISION_VERSION = 1  # bump when what extract_vision stores changes (part of the cache key)
QUANTITIES = ("mean", "grid", "lrs")
SHARD_SIZE = 256  # images per shard; a multiple of the default batch sizes, so batches never straddle shards


def vision_batches(lm: LoadedModel, images: Sequence, batch_size: int) -> Iterator[tuple[dict, list[torch.Tensor]]]:
    """Per batch of ``images`` (PIL): ``(image-processor outputs on the CPU, one state [V+1, patches, d] per image)``."""
    for b in range(0, len(images), batch_size):
        inputs = lm.processor.image_processor(images=list(images[b : b + batch_size]), return_tensors="pt")
        with no_grad_eval(lm.model):
            states = lm.adapter.vision_hidden_states(lm.model, {k: v.to(lm.device) for k, v in inputs.items()})
        yield inputs, states


def vision_states(lm: LoadedModel, images: Sequence, *, batch_size: int = 8) -> Iterator[torch.Tensor]:
    """Per image (in order), the vision tower's states ``[V+1, patches, d]`` as float32 on the CPU."""
    for _, states in vision_batches(lm, images, batch_size):
        for h in states:
            yield h.float().cpu()


def patch_positions(lm: LoadedModel, image_inputs: dict) -> list[np.ndarray]:
    """Per image, the centre of each patch token of :func:`vision_states` as ``[T, 2]`` (row, column) in ``[0, 1)``
    of the image, NaN where a token has no single place in the image frame (the adapter's ``patch_positions``)."""
    return lm.adapter.patch_positions(lm.model, image_inputs)


def token_similarity(h: torch.Tensor) -> torch.Tensor:
    """One image's LRS ``[V+1, V+1]`` from its states ``h`` ``[V+1, T, d]``: the cosine similarity of a token's
    state at layer ``i`` and at layer ``j``, averaged over the ``T`` tokens."""
    hn = torch.nn.functional.normalize(h, dim=-1)
    return torch.einsum("itd,jtd->ij", hn, hn) / h.shape[1]


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


def pooled(lm: LoadedModel, images: Sequence, *, grid: int = 2, batch_size: int = 16,
           progress=None) -> Iterator[dict[str, torch.Tensor]]:
    """Per image (in order), the stored quantities ``{"mean", "grid", "lrs"}`` (float32, CPU) from one forward
    pass of the vision tower per batch. ``progress``: optional callable ``(done, total)`` after each batch."""
    for b, (inputs, states) in zip(range(0, len(images), batch_size), vision_batches(lm, images, batch_size)):
        positions = patch_positions(lm, inputs)
        if len(states) != len(positions):
            raise ProbekitError(f"{len(states)} images of states but {len(positions)} of patch positions")
        for h, pos in zip(states, positions):
            h = h.float().cpu()
            if h.shape[1] != len(pos):
                raise ProbekitError(f"{h.shape[1]} patch tokens but {len(pos)} patch positions "
                                    f"({type(lm.adapter).__name__}); its vision_hidden_states and patch_positions "
                                    "disagree")
            yield {"mean": h.mean(1), "grid": grid_pool(h, pos, grid), "lrs": token_similarity(h)}
        if progress is not None:
            progress(min(b + batch_size, len(images)), len(images))


def default_vision_layer(lm: LoadedModel, n_layers: int) -> int:
    """The vision layer the model's projector reads: the config's ``vision_feature_layer`` (LLaVA; default -2, the
    penultimate, paper C's baseline), otherwise (Qwen2-VL: the merger after the last block) the last."""
    v = getattr(lm.model.config, "vision_feature_layer", None)
    if isinstance(v, (list, tuple)):
        v = v[-1]
    if v is None:
        return n_layers
    v = int(v)
    return v if v >= 0 else n_layers + 1 + v


def tower_facts(lm: LoadedModel, n_layers: int, image_size: int) -> dict:
    """What the chapter says about the tower, recorded in the store so that a re-run needs no model."""
    vc = lm.model.config.vision_config
    return {"vision_layers": int(n_layers), "default_layer": default_vision_layer(lm, n_layers),
            "image_size": int(image_size), "vision_config": type(vc).__name__,
            "width": getattr(vc, "hidden_size", getattr(vc, "embed_dim", "?")), "patch": vc.patch_size}


def vision_key(identity: Mapping, images: Sequence, *, grid: int, data: Mapping | None = None) -> dict:
    """The cache key of :func:`extract_vision`: the model's identity (``LoadedModel.identity()`` or
    ``probekit.models.identify``), the pixels, the pooling grid, what the caller says the images are (``data``)."""
    return {"kind": "vision_layers", "version": VISION_VERSION, "model": dict(identity),
            "images": {"n": len(images), "pixels_sha256": pixels_sha256(images)}, "grid": int(grid),
            "data": dict(data or {}), "storage_dtype": "float32"}


def open_complete(root, key: Mapping) -> ActivationStore | None:
    """The store at ``root`` if it is complete, was written for ``key`` and holds paper C's arrays; None otherwise
    (nothing is run)."""
    store = ActivationStore.open_complete(root, key)
    return store if store is not None and set(store.quantities) == set(QUANTITIES) else None


def extract_vision(lm: LoadedModel, images: Sequence, out, *, grid: int = 2, labels: Sequence[int] | None = None,
                   classes: Sequence[str] | None = None, ids: Sequence[str] | None = None, data: Mapping | None = None,
                   image_size: int | None = None, batch_size: int = 32, progress=None) -> ActivationStore:
    """``mean``, ``grid`` and ``lrs`` of every image (PIL, one size) into the store at ``out``.

    Cached: the key (:func:`vision_key`) holds the model's identity, a hash of the pixels, ``grid`` and ``data``; a
    complete store for the same key is returned without running the model, a partial one is finished (resume),
    a store for another key is refused (StoreError). The manifest's ``extra`` records what a re-run needs without
    the model (:func:`tower_facts`: vision layers, the projector's layer, the image size, the tower's config).
    """
    images = list(images)
    if not images:
        raise DataError("extract_vision: no images given")
    if batch_size < 1:
        raise ProbekitError("batch_size must be a positive integer")
    n = len(images)
    labels, classes, ids = image_items(n, labels, classes, ids)
    key = vision_key(lm.identity(), images, grid=grid, data=data)
    have = open_complete(out, key)
    if have is not None:
        return have
    first = next(pooled(lm, images[:1], grid=grid, batch_size=1))
    V1, d = first["mean"].shape
    size = int(image_size if image_size is not None else images[0].size[0])
    store = ActivationStore.create(
        Path(out), key=key, variants=[], n_items=n, ids=ids, labels=labels, classes=classes, n_layers=V1,
        hidden_size=d, storage_dtype="float32", shard_size=SHARD_SIZE,
        quantities={k: tuple(v.shape) for k, v in first.items()},
        extra={**tower_facts(lm, V1 - 1, size), "grid": int(grid), "device": str(lm.device), "model_path": lm.path},
    )
    todo = store.missing_shards()
    ranges = store.shard_ranges()
    done, total = 0, sum(ranges[i][1] - ranges[i][0] for i in todo)
    for s in todo:
        start, stop = ranges[s]
        parts = {k: [] for k in QUANTITIES}
        step = None if progress is None else (lambda k, _, base=done: progress(base + k, total))
        for q in pooled(lm, images[start:stop], grid=grid, batch_size=batch_size, progress=step):
            for k in QUANTITIES:
                parts[k].append(q[k])
        done += stop - start
        store.write_arrays(s, {k: torch.stack(v) for k, v in parts.items()})
    return store


__all__ = ["QUANTITIES", "SHARD_SIZE", "VISION_VERSION", "default_vision_layer", "extract_vision", "grid_pool",
           "open_complete", "patch_positions", "pooled", "token_similarity", "tower_facts",
           "vision_batches", "vision_key", "vision_states"]
