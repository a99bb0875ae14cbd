"""LLaVA-NeXT (any-resolution tiling; ``LlavaNextForConditionalGeneration``).

The processor returns ``image_sizes`` beside ``pixel_values``; the number of image tokens depends on the
image's aspect ratio, so prompts of one batch can differ in length (right padding handles it).
"""

import torch

from .base import Adapter, _vit_states


class LlavaNextAdapter(Adapter):
    family = "llava_next"
    architectures = ("LlavaNextForConditionalGeneration",)

    def vision_hidden_states(self, model, image_inputs):
        """All real tiles of an image (base view first), their patch tokens concatenated."""
        from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

        cfg = model.config
        out = []
        for pv, size in zip(image_inputs["pixel_values"], image_inputs["image_sizes"]):
            n = image_size_to_num_patches(size.tolist(), cfg.image_grid_pinpoints, cfg.vision_config.image_size)
            tiles = _vit_states(model.model.vision_tower, pv[:n])  # n x [V+1, T, d]
            out.append(torch.cat(tiles, dim=1))
        return out

