"""Paper B (arXiv 2510.04819): the image tokens' keys and values in the language model's KV cache.

Under causal attention an image token's key and value at every layer depend only on what precedes it
(the image and any text prefix), never on the question that follows. probekit reads them from the model's
own cache (``past_key_values`` of a forward pass with ``use_cache=True``):

- **values**: ``[layers, image tokens, kv_heads * head_dim]`` — all KV heads, flattened per token;
- **keys**: the same shape, *as cached*, i.e. after the rotary position embedding (Qwen2-VL: multimodal
  3-D rotary positions), which is what attention actually compares queries with.

Layers are numbered 1..L like decoder blocks (the cache has no embedding layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .extract import _to_device
from .models import LoadedModel


def image_kv(lm: LoadedModel, prompts: Sequence[str], images: Sequence) -> list[dict[str, torch.Tensor]]:
    """For each (templated prompt, image) pair: ``{"keys", "values"}`` each ``[L, n_image_tokens, H_kv*hd]``
    (float32, CPU), the image tokens in prompt order."""
    inputs = lm.processor(text=list(prompts), images=list(images), padding=True, padding_side="right",
                          return_tensors="pt")
    inputs = _to_device(lm, inputs)
    with torch.inference_mode():
        out = lm.model(**inputs, use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
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
        result.append(per)
    return result
