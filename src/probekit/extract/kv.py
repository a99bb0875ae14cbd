"""Paper B (arXiv 2510.04819): the image tokens' keys and values in the language model's KV cache.

Under causal attention an image token's key and value at every layer depend only on what precedes it
(the image and any text prefix), never on the question that follows. probekit reads them from the model's
own cache (``cache``, before transformers 5.24 ``past_key_values``, of a forward pass with ``use_cache=True``):

- **values**: ``[layers, image tokens, kv_heads * head_dim]`` — all KV heads, flattened per token;
- **keys**: the same shape, *as cached*, i.e. after the rotary position embedding (Qwen2-VL: multimodal
  3-D rotary positions), which is what attention actually compares queries with.

Layers are numbered 1..L like decoder blocks (the cache has no embedding layer): the keys and values of
block *l* are projections of that block's *input* (the residual stream after block *l-1*, normalized).

Beside them, at the same image-token positions (:func:`image_states`):

- **hidden**: the residual stream ``[L+1, T, d]`` (HF ``hidden_states``; 0 = the LM's input there, i.e. the
  **projector output**, ``l`` = after block ``l``);
- **vision**: the **vision encoder's output as the projector receives it** — LLaVA: the selected vision layer
  (CLS dropped), one vision token per image token; Qwen2-VL / 2.5-VL: the last vision block's states of the
  ``m x m`` patches merged into the token, concatenated (the merger's input); LLaVA-NeXT: the tiles packed
  like the image tokens, NaN at the row-end newline tokens (a learned embedding, not the encoder's).

:func:`blocked_attention` stops later tokens from attending to chosen image tokens at chosen layers (the
attention mask each decoder layer receives is narrowed; nothing else changes), :func:`text_states` reads a
text's last token, and :func:`extract_image_tokens` writes all of it to an :class:`ActivationStore` (named
arrays; cached by a key, atomic, resumable). :func:`extract_queries` writes the text side beside it — the text
queries' states, with the token grid, the decoder's depth and key / value width and the causality check
(:func:`causality_check`) in the manifest — so that a reader needs no model at all. :func:`find_image_tokens`
and :func:`find_queries` find such a complete store from the model's identity alone
(:func:`probekit.models.identify`: read from its config and weight files, nothing built).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..compat import output_cache
from ..errors import DataError, ProbekitError
from ..models import LoadedModel
from ..prompts import template
from ..store import ActivationStore, key_sha256
from .runtime import image_items, no_grad_eval, pixels_sha256, to_device

KV_VERSION = 1  # bump when what extract_image_tokens stores changes (part of the cache key)
QUANTITIES = ("keys", "values", "hidden", "vision")


# ---- attention blocking ---------------------------------------------------------------------------------


def block_masks(input_ids: torch.Tensor, image_token_id: int, block: Mapping[int, Sequence[int]]) -> dict[int, torch.Tensor]:
    """Per decoder layer (1..L), a bool ``[B, 1, S, S]`` mask of the attention *still allowed*: query ``q`` may
    not attend to key ``k`` when ``k`` is one of the layer's blocked image tokens and ``q > k`` (every later
    token — text and later image tokens; a blocked token still sees itself). ``block`` maps a layer to
    indices among the image tokens (0 = the first image token of each row)."""
    B, S = input_ids.shape
    is_img = input_ids == image_token_id
    q = torch.arange(S, device=input_ids.device)
    later = q[:, None] > q[None, :]  # [q, k]
    out = {}
    for layer, idx in block.items():
        idx = sorted({int(i) for i in idx})
        keys = torch.zeros(B, S, dtype=torch.bool, device=input_ids.device)
        for b in range(B):
            pos = is_img[b].nonzero().squeeze(-1)
            bad = [i for i in idx if not 0 <= i < len(pos)]
            if bad:
                raise ProbekitError(f"block: image-token indices {bad} at layer {layer} are out of range 0..{len(pos) - 1}")
            keys[b, pos[idx]] = True
        out[int(layer)] = ~(keys[:, None, None, :] & later[None, None])
    return out


@contextlib.contextmanager
def blocked_attention(lm: LoadedModel, allowed: Mapping[int, torch.Tensor]):
    """While active, decoder layer ``l`` (1..L) combines the attention mask it receives with ``allowed[l]``
    (bool ``[B, 1, S, S]``, True = may attend; from :func:`block_masks`). Works on full forward passes (no
    cached prefix); sdpa / eager masks (bool or additive float) and the causal-only ``None`` are handled."""
    layers = lm.adapter.language_model(lm.model).layers
    bad = [l for l in allowed if not 1 <= int(l) <= len(layers)]
    if bad:
        raise ProbekitError(f"cannot block attention at layers {bad}: the decoder has layers 1..{len(layers)}")
    handles = []

    def hook_for(extra: torch.Tensor):
        def hook(module, args, kwargs):
            hs = kwargs.get("hidden_states", args[0] if args else None)
            S = extra.shape[-1]
            if hs is None or hs.shape[1] != S:
                raise ProbekitError("blocked_attention works on full forward passes of the same inputs the block "
                                    f"masks were built for ({S} tokens), not on cached continuations")
            mask = kwargs.get("attention_mask")
            ok = extra.to(hs.device)
            if mask is None:
                causal = torch.ones(S, S, dtype=torch.bool, device=hs.device).tril()
                mask = causal[None, None] & ok
            elif mask.dtype == torch.bool:
                mask = mask[..., :S, :S] & ok
            else:
                mask = mask[..., :S, :S].masked_fill(~ok, torch.finfo(mask.dtype).min)
            kwargs["attention_mask"] = mask
            return args, kwargs

        return hook

    try:
        for l, extra in allowed.items():
            handles.append(layers[int(l) - 1].self_attn.register_forward_pre_hook(hook_for(extra), with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()


# ---- one forward: every quantity at the image tokens ------------------------------------------------------


def image_states(lm: LoadedModel, prompts: Sequence[str], images: Sequence, *,
                 block: Mapping[int, Sequence[int]] | None = None) -> list[dict[str, torch.Tensor]]:
    """For each (templated prompt, image) pair, at that image's LM image tokens (prompt order), float32 on the
    CPU: ``keys``, ``values`` ``[L, T, H_kv*hd]`` (cache, keys after rotary), ``hidden`` ``[L+1, T, d]`` (0 =
    projector output) and ``vision`` ``[T, d_v]`` (the projector's input; see the module doc). ``block``: layer
    (1..L) -> image-token indices that later tokens may not attend to at that layer (:func:`block_masks`)."""
    inputs = lm.processor(text=list(prompts), images=list(images), padding=True, padding_side="right",
                          return_tensors="pt")
    inputs = to_device(lm, inputs)
    captured = []
    handle = lm.adapter.projector(lm.model).register_forward_hook(lambda m, a, o: captured.append(a[0].detach()))
    allowed = block_masks(inputs["input_ids"], lm.image_token_id, block) if block else {}
    try:
        with no_grad_eval(lm.model), blocked_attention(lm, allowed):
            out = lm.model(**inputs, use_cache=True, output_hidden_states=True, logits_to_keep=1)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ProbekitError(f"{lm.model_id!r}: the projector ran {len(captured)} times in one forward pass, expected once")
    image_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    vision = lm.adapter.vision_tokens(lm.model, captured[0], image_inputs)
    cache = output_cache(out)
    is_img = inputs["input_ids"] == lm.image_token_id  # [B, T]
    result = []
    for b in range(is_img.shape[0]):
        pos = is_img[b].nonzero().squeeze(-1)
        per = {}
        for name in ("keys", "values"):
            # each layer: [B, H_kv, T, hd] -> image positions -> [n_img, H_kv*hd]
            per[name] = torch.stack([
                getattr(layer, name)[b][:, pos].transpose(0, 1).flatten(1) for layer in cache.layers
            ]).float().cpu()
        per["hidden"] = torch.stack([h[b, pos] for h in out.hidden_states]).float().cpu()
        per["vision"] = vision[b].float().cpu()
        if len(per["vision"]) != len(pos):
            raise ProbekitError(f"{lm.model_id!r}: {len(per['vision'])} vision tokens for {len(pos)} image tokens; "
                                f"the {lm.adapter.family} adapter's vision_tokens disagrees with the model")
        result.append(per)
    return result


def image_kv(lm: LoadedModel, prompts: Sequence[str], images: Sequence, *,
             block: Mapping[int, Sequence[int]] | None = None) -> list[dict[str, torch.Tensor]]:
    """For each (templated prompt, image) pair: ``{"keys", "values"}`` each ``[L, n_image_tokens, H_kv*hd]``
    (float32, CPU), the image tokens in prompt order."""
    return [{k: s[k] for k in ("keys", "values")} for s in image_states(lm, prompts, images, block=block)]


def token_grid(lm: LoadedModel, image) -> tuple[tuple[int, int], np.ndarray]:
    """The base view's token grid ``(rows, cols)`` over the whole image and each LM image token's cell in it
    (row-major; -1 for tokens without one: LLaVA-NeXT's high-resolution tiles and newlines, a CLS token)."""
    inputs = lm.processor(text=[template(lm, "?")], images=[image], return_tensors="pt")
    n = int((inputs["input_ids"] == lm.image_token_id).sum())
    image_inputs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    grid, cells = lm.adapter.token_cells(lm.model, image_inputs, [n])
    return (int(grid[0]), int(grid[1])), cells[0]


def text_states(lm: LoadedModel, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """The last token of each text as the language model processes the text alone (its tokenizer's special
    tokens, no chat template, no image): ``keys``/``values`` ``[n, L, H_kv*hd]`` (keys after rotary, at the
    token's own position) and ``hidden`` ``[n, L+1, d]``."""
    if not texts or any(not str(t).strip() for t in texts):
        raise ProbekitError(f"text_states needs non-empty texts, got {list(texts)!r}")
    enc = lm.tokenizer(list(texts), padding=True, padding_side="right", return_tensors="pt")
    enc = {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    mask = enc["attention_mask"]
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)
    with no_grad_eval(lm.model):
        out = lm.model(**enc, use_cache=True, output_hidden_states=True, logits_to_keep=1)
    rows = torch.arange(len(last), device=last.device)
    res = {name: torch.stack([getattr(layer, name)[rows, :, last].flatten(1) for layer in output_cache(out).layers], 1)
           for name in ("keys", "values")}
    res["hidden"] = torch.stack([h[rows, last] for h in out.hidden_states], 1)
    return {k: v.float().cpu().numpy() for k, v in res.items()}


# ---- into the store ----------------------------------------------------------------------------------------


def _as_pil(im):
    from PIL import Image

    if hasattr(im, "convert"):
        return im.convert("RGB")
    return Image.fromarray(np.asarray(im)).convert("RGB")


def extract_image_tokens(lm: LoadedModel, images: Sequence, out, *, prompt: str = "What is in this image?",
                         prefix: str | None = None, block: Mapping[int, Sequence[int]] | None = None,
                         layers: Sequence[int] | None = None, labels: Sequence[int] | None = None,
                         classes: Sequence[str] | None = None, ids: Sequence[str] | None = None,
                         batch_size: int = 16, storage_dtype: str = "float32", shard_size: int = 256,
                         progress: bool = False) -> ActivationStore:
    """Image keys, values, hidden states and vision tokens of every image into the store at ``out``.

    ``images``: PIL images or uint8 arrays, all giving the same number of image tokens (one size). The prompt
    is ``prompt`` through the model's chat template with the image, ``prefix`` (text before the image) when
    given; the text after the image does not change what is stored (causal attention), but is part of the key.
    ``layers``: decoder blocks to keep (default all 1..L): ``keys``/``values`` ``[n, len(layers), T, d_kv]``,
    ``hidden`` ``[n, 1+len(layers), T, d]`` (layer 0 first). ``block``: see :func:`image_states`.

    Cached: the key holds the model's identity, the templated prompt, a hash of the pixels, ``block``,
    ``layers`` and the storage dtype; a complete store for the same key is returned without running the
    model, a partial one is finished (resume), a store for another key is refused (StoreError).
    The token grid (``manifest["extra"]["grid"]``, ``["cells"]``) and ``["layers"]`` are recorded.
    """
    images = list(images)
    if not images:
        raise DataError("extract_image_tokens: no images given")
    if batch_size < 1 or shard_size < 1:
        raise ProbekitError("batch_size and shard_size must be positive integers")
    L = lm.num_layers
    layers = list(range(1, L + 1)) if layers is None else [int(l) for l in layers]
    if not layers or any(not 1 <= l <= L for l in layers) or len(set(layers)) != len(layers):
        raise ProbekitError(f"layers {layers!r} must be distinct decoder blocks in 1..{L}")
    n = len(images)
    labels, classes, ids = image_items(n, labels, classes, ids)
    text = template(lm, prompt, prefix=prefix)
    key = {**_image_tokens_key(lm.identity(), images, block, layers, storage_dtype), "prompt": text}
    root = Path(out)
    have = complete_store(root)
    if have is not None and have.manifest["key_sha256"] == key_sha256(key):
        return have
    first_pil = _as_pil(images[0])
    grid, cells = token_grid(lm, first_pil)
    probe = _select(image_states(lm, [text], [first_pil], block=block)[0], layers)
    T = probe["keys"].shape[1]
    store = ActivationStore.create(
        root, key=key, variants=[], n_items=n, ids=ids, labels=labels, classes=classes, n_layers=L + 1,
        hidden_size=lm.hidden_size, storage_dtype=storage_dtype, shard_size=shard_size,
        quantities={k: tuple(v.shape) for k, v in probe.items()},
        extra={"grid": list(grid), "cells": cells.tolist(), "layers": layers, "prompt": prompt, "prefix": prefix,
               "n_image_tokens": T, "device": str(lm.device), "model_path": lm.path},
    )
    todo = store.missing_shards()
    ranges = store.shard_ranges()
    bar = tqdm(total=sum(ranges[i][1] - ranges[i][0] for i in todo), disable=not progress,
               desc=f"image tokens {lm.model_id}", unit="image")
    for s in todo:
        start, stop = ranges[s]
        parts = {k: [] for k in QUANTITIES}
        for b in range(start, stop, batch_size):
            chunk = [_as_pil(images[i]) for i in range(b, min(b + batch_size, stop))]
            for i, st in enumerate(image_states(lm, [text] * len(chunk), chunk, block=block)):
                st = _select(st, layers)
                if st["keys"].shape[1] != T:
                    raise DataError(f"image {ids[b + i]!r} gives {st['keys'].shape[1]} image tokens, the first image "
                                    f"{T}; resize all images to one size (e.g. the model's image size)")
                for k in QUANTITIES:
                    parts[k].append(st[k])
            bar.update(len(chunk))
        store.write_arrays(s, {k: torch.stack(v) for k, v in parts.items()})
    bar.close()
    return store


def _image_tokens_key(identity: Mapping, images: Sequence, block, layers: Sequence[int], storage_dtype: str) -> dict:
    """The cache key of :func:`extract_image_tokens`, without the templated prompt (which needs the processor)."""
    return {"kind": "image_tokens", "version": KV_VERSION, "model": dict(identity),
            "images": {"n": len(images), "pixels_sha256": pixels_sha256(images)},
            "block": {str(k): sorted(int(i) for i in v) for k, v in sorted((block or {}).items())},
            "layers": [int(l) for l in layers], "storage_dtype": storage_dtype}


def complete_store(out) -> ActivationStore | None:
    """The complete store of named arrays at ``out``, or None (none there, damaged, partial, or per-variant
    states)."""
    st = ActivationStore.open_complete(out)
    return st if st is not None and st.quantities else None


def _same_json(a, b) -> bool:
    return json.loads(json.dumps(a, default=str)) == json.loads(json.dumps(b, default=str))


def find_image_tokens(out, identity: Mapping, images: Sequence, *, prompt: str = "What is in this image?",
                      prefix: str | None = None, block: Mapping[int, Sequence[int]] | None = None,
                      layers: Sequence[int], storage_dtype: str = "float32") -> ActivationStore | None:
    """The complete store that :func:`extract_image_tokens` with these arguments wrote at ``out`` for the model
    whose :meth:`~probekit.models.LoadedModel.identity` is ``identity``, found without the model: its key must
    hold that identity, the same pixels, ``block``, ``layers`` and storage dtype, and its manifest the same
    ``prompt`` and ``prefix`` (the templated prompt in the key needs the processor; the model's chat template is
    not part of its identity). None when there is no such store: then extract."""
    st = complete_store(out)
    if st is None:
        return None
    want = _image_tokens_key(identity, list(images), block, layers, storage_dtype)
    got = {k: st.key.get(k) for k in want}
    extra = st.extra
    if not _same_json(got, want) or extra.get("prompt") != prompt or extra.get("prefix") != prefix:
        return None
    return st


# ---- the text side: queries, token grid, depth and the causality check --------------------------------------


def causality_check(lm: LoadedModel, images: Sequence, prompt: str, other_prompt: str) -> dict:
    """Largest difference of any image key / value between two prompts that differ only after the image
    (``n_images``, ``prompts``, ``keys``, ``values``): 0 under causal attention."""
    imgs = [_as_pil(im) for im in images]
    a = image_states(lm, [template(lm, prompt)] * len(imgs), imgs)
    b = image_states(lm, [template(lm, other_prompt)] * len(imgs), imgs)
    return {"n_images": len(imgs), "prompts": [prompt, other_prompt],
            **{k: float(max((x[k] - y[k]).abs().max() for x, y in zip(a, b))) for k in ("keys", "values")}}


def _queries_key(identity: Mapping, texts: Sequence[str], images: Sequence) -> dict:
    return {"kind": "text_queries", "version": KV_VERSION, "model": dict(identity), "texts": list(texts),
            "images": {"n": len(images), "pixels_sha256": pixels_sha256(images)}}


def extract_queries(lm: LoadedModel, texts: Sequence[str], out, *, images: Sequence, prompt: str,
                    check_prompt: str) -> ActivationStore:
    """The text side of reading image tokens, into the store at ``out``: one item per text, its last token's
    states as the LM processes the text alone (:func:`text_states`: ``keys``, ``values`` ``[L, H_kv*hd]``,
    ``hidden`` ``[L+1, d]``), and in ``manifest["extra"]`` what a reader of image-token stores needs to know of
    the model: ``texts``, ``num_layers`` (L), ``kv_heads`` and ``head_dim``, ``image_size`` (``[H, W]`` of
    ``images``, which must be the size the image-token stores are made at), the base view's token ``grid`` and
    ``cells`` on it (:func:`token_grid`), and ``causality`` (:func:`causality_check` of ``images`` under
    ``prompt`` and ``check_prompt``).

    Cached like :func:`extract_image_tokens` (key: the model's identity, the texts, the images' pixels and the
    templated prompts); a complete store for the same key is returned without running the model."""
    texts, images = [str(t) for t in texts], list(images)
    if not images:
        raise DataError("extract_queries: no images for the token grid and the causality check")
    key = {**_queries_key(lm.identity(), texts, images),
           "prompts": [template(lm, prompt), template(lm, check_prompt)]}
    have = complete_store(out)
    if have is not None and have.manifest["key_sha256"] == key_sha256(key):
        return have
    first = _as_pil(images[0])
    grid, cells = token_grid(lm, first)
    states = text_states(lm, texts)
    tc = lm.text_config
    store = ActivationStore.create(
        out, key=key, variants=[], n_items=len(texts), ids=[str(i) for i in range(len(texts))],
        labels=list(range(len(texts))), classes=texts, n_layers=lm.num_layers + 1, hidden_size=lm.hidden_size,
        shard_size=max(1, len(texts)), quantities={k: v.shape[1:] for k, v in states.items()},
        extra={"texts": texts, "num_layers": lm.num_layers, "kv_heads": int(tc.num_key_value_heads),
               "head_dim": int(getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads),
               "image_size": [first.size[1], first.size[0]], "grid": list(grid), "cells": cells.tolist(),
               "prompt": prompt, "check_prompt": check_prompt,
               "causality": causality_check(lm, images, prompt, check_prompt)})
    store.write_arrays(0, {k: torch.from_numpy(v) for k, v in states.items()})
    return store


def find_queries(out, identity: Mapping, texts: Sequence[str], *, images: Sequence | None = None, prompt: str,
                 check_prompt: str) -> ActivationStore | None:
    """The complete store :func:`extract_queries` wrote at ``out`` for the model whose identity is ``identity``
    and these texts and prompts, found without the model; with ``images`` its pixels must match too (without:
    read ``extra["image_size"]`` first to make them). None when there is no such store."""
    st = complete_store(out)
    if st is None:
        return None
    want = _queries_key(identity, [str(t) for t in texts], [] if images is None else list(images))
    keys = ["kind", "version", "model", "texts"] + (["images"] if images is not None else [])
    extra = st.extra
    if (not _same_json({k: st.key.get(k) for k in keys}, {k: want[k] for k in keys})
            or extra.get("prompt") != prompt or extra.get("check_prompt") != check_prompt):
        return None
    return st


def _select(states: dict[str, torch.Tensor], layers: Sequence[int]) -> dict[str, torch.Tensor]:
    """Keep decoder blocks ``layers`` (1-based): keys/values rows ``l-1``, hidden rows 0 and ``l``."""
    idx = torch.tensor([l - 1 for l in layers])
    return {"keys": states["keys"][idx], "values": states["values"][idx],
            "hidden": states["hidden"][torch.cat([torch.tensor([0]), idx + 1])], "vision": states["vision"]}


__all__ = ["QUANTITIES", "block_masks", "blocked_attention", "causality_check", "complete_store", "extract_image_tokens",
           "extract_queries", "find_image_tokens", "find_queries", "image_kv", "image_states",
           "text_states", "token_grid"]
