"""What every model family shares; a family adapter overrides only what differs."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch


class Adapter:
    """Family-specific knowledge about one multimodal LLM class.

    Subclasses set ``family`` and ``architectures`` (the transformers class names they serve) and override
    the few methods whose behaviour differs. Everything else (templating, batching, positions) is shared
    and lives in :mod:`probekit.extract`.
    """

    family: ClassVar[str] = ""
    architectures: ClassVar[tuple[str, ...]] = ()

    def text_config(self, config):
        """The language model's config (layers, width)."""
        return config.text_config

    def image_token_id(self, config, processor) -> int:
        """Token id that stands for image patches in ``input_ids``."""
        return int(config.image_token_id)

    def image_placeholder(self, processor) -> str:
        """The text the chat template writes where the image goes (before the processor expands it)."""
        return processor.image_token

    def language_model(self, model) -> torch.nn.Module:
        """The decoder (``model.model.language_model`` in transformers 5)."""
        return model.model.language_model

    def suffix_position_ids(self, model, prefix_inputs: dict, suffix_ids: torch.Tensor) -> torch.Tensor | None:
        """Position ids of ``suffix_ids`` [B, S] run on the key/value cache of ``prefix_inputs`` (an unpadded
        prefix pass). ``None``: the model counts on from the cache length, right for 1-D rotary positions."""
        return None

    def vision_hidden_states(self, model, image_inputs: dict) -> list[torch.Tensor]:
        """Per image, the vision tower's hidden states ``[V+1, patches, d]`` (0 = patch embeddings, as HF
        ``hidden_states``), with CLS/register tokens dropped. Default: a ViT called on ``pixel_values``
        ``[B, 3, H, W]`` (CLIP, SigLIP, DINOv2)."""
        pv = image_inputs["pixel_values"]
        return vit_states(model.model.vision_tower, pv)

    def patch_positions(self, model, image_inputs: dict) -> list[np.ndarray]:
        """Per image, the centre of each token of :meth:`vision_hidden_states` as ``[T, 2]`` (row, column) in
        ``[0, 1)`` of the image, NaN where a token has no single place in the image frame. Default (CLIP-style
        towers): row-major over the ``H/p x W/p`` patch grid."""
        patch = int(model.config.vision_config.patch_size)
        pv = image_inputs["pixel_values"]
        return [patch_centres(pv.shape[-2] // patch, pv.shape[-1] // patch)] * len(pv)

    # ---- training an organism: which modules play which role ------------------------------------------------

    def training_parts(self, model) -> dict[str, list[torch.nn.Module]]:
        """The modules of each training role: ``vision`` (the tower), ``projector`` and ``decoder`` (the language
        model and its output head). LLaVA: vision_tower / multi_modal_projector."""
        inner = model.model
        return {"vision": [inner.vision_tower], "projector": [inner.multi_modal_projector],
                "decoder": [inner.language_model, model.lm_head]}

    def pooled_vision_features(self, model, image_inputs: dict) -> torch.Tensor:
        """One vector per image from the vision tower's last block (CLIP: its pooled CLS output)."""
        return model.model.vision_tower(pixel_values=image_inputs["pixel_values"]).pooler_output

    # ---- paper B: the LM's image tokens, their vision-side counterparts and their place in the image ----------

    def projector(self, model) -> torch.nn.Module:
        """The module that turns vision features into the LM's image-token embeddings; its first input is the
        vision encoder's output as the projector receives it (LLaVA: the selected layer, CLS dropped)."""
        return model.model.multi_modal_projector

    def vision_tokens(self, model, projector_input: torch.Tensor, image_inputs: dict) -> list[torch.Tensor]:
        """Per image, the projector's input aligned with that image's LM image tokens ``[T_i, d_v]`` (NaN rows
        for image tokens with no vision token of their own). LLaVA: one vision token per image token."""
        return list(projector_input)

    def token_cells(self, model, image_inputs: dict, n_tokens: list[int]) -> tuple[tuple[int, int], list[np.ndarray]]:
        """The base view's token grid ``(rows, cols)`` over the whole image and, per image, each LM image
        token's cell (row-major index into that grid; -1 for a token without one, e.g. a CLS token).
        ``n_tokens``: the number of LM image tokens of each image. LLaVA: the vision tower's patch grid."""
        patch = int(model.config.vision_config.patch_size)
        pv = image_inputs["pixel_values"]
        rows, cols = pv.shape[-2] // patch, pv.shape[-1] // patch
        out = []
        for n in n_tokens:
            extra = n - rows * cols  # vision_feature_select_strategy="full" keeps CLS first
            if extra < 0:
                raise ValueError(f"{n} image tokens for a {rows}x{cols} patch grid")
            out.append(np.concatenate([np.full(extra, -1), np.arange(rows * cols)]).astype(np.int64))
        return (rows, cols), out


def patch_centres(rows: int, cols: int) -> np.ndarray:
    """``[rows * cols, 2]``: the centre (row, column) in ``[0, 1)`` of each cell of a ``rows x cols`` grid, row-major."""
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return np.stack([(rr.ravel() + 0.5) / rows, (cc.ravel() + 0.5) / cols], 1)


def vit_states(tower, pixel_values: torch.Tensor) -> list[torch.Tensor]:
    dtype = next(tower.parameters()).dtype
    out = tower(pixel_values.to(dtype), output_hidden_states=True)
    hs = torch.stack(out.hidden_states, dim=1)  # [B, V+1, T, d]
    cfg = tower.config
    patch = cfg.patch_size
    patches = (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)
    extra = hs.shape[2] - patches  # CLS (+ register) tokens come first
    return list(hs[:, :, extra:])

