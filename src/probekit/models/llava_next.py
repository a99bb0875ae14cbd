"""LLaVA-NeXT (any-resolution tiling; ``LlavaNextForConditionalGeneration``).

The processor returns ``image_sizes`` beside ``pixel_values``; the number of image tokens depends on the
image's aspect ratio, so prompts of one batch can differ in length (right padding handles it).
"""

import numpy as np
import torch

from .base import Adapter, patch_centres, vit_states


class LlavaNextAdapter(Adapter):
    family = "llava_next"
    architectures = ("LlavaNextForConditionalGeneration",)

    def vision_hidden_states(self, model, image_inputs):
        """All real tiles of an image (base view first), their patch tokens concatenated."""
        from transformers.models.llava_next.modeling_llava_next import (
            image_size_to_num_patches,
        )

        cfg = model.config
        out = []
        for pv, size in zip(image_inputs["pixel_values"], image_inputs["image_sizes"]):
            n = image_size_to_num_patches(size.tolist(), cfg.image_grid_pinpoints, cfg.vision_config.image_size)
            tiles = vit_states(model.model.vision_tower, pv[:n])  # n x [V+1, T, d]
            out.append(torch.cat(tiles, dim=1))
        return out

    def patch_positions(self, model, image_inputs):
        """The base (global) view's tokens row-major over its patch grid; the high-resolution tiles' tokens get
        NaN (they enter a mean over the image, not a spatial grid)."""
        patch = int(model.config.vision_config.patch_size)
        pv = image_inputs["pixel_values"]
        base = patch_centres(pv.shape[-2] // patch, pv.shape[-1] // patch)
        return [np.concatenate([base, np.full(((n - 1) * len(base), 2), np.nan)]) for n in self._tiles(model, image_inputs)]

    def _pack(self, model, per_tile: torch.Tensor, image_inputs: dict, fill: float) -> list[torch.Tensor]:
        """``per_tile`` [all real tiles, T_tile, c] packed as the model packs the projector's output (base view
        first, then the unpadded high-resolution grid with a row-end newline token filled with ``fill``)."""
        from transformers.models.llava_next.modeling_llava_next import (
            image_size_to_num_patches,
        )

        cfg = model.config
        sizes = image_inputs["image_sizes"]
        counts = [image_size_to_num_patches(s.tolist() if hasattr(s, "tolist") else s, cfg.image_grid_pinpoints,
                                            cfg.vision_config.image_size) for s in sizes]
        split = torch.split(per_tile, counts, dim=0)
        newline = torch.full((per_tile.shape[-1],), fill, dtype=per_tile.dtype, device=per_tile.device)
        packed, _ = model.model.pack_image_features(list(split), sizes, cfg.vision_feature_select_strategy,
                                                    image_newline=newline)
        return list(packed)

    def vision_tokens(self, model, projector_input, image_inputs):
        """Every tile's vision tokens packed like the image tokens (base view, then the high-resolution tiles
        unpadded); the row-end newline tokens get NaN (they come from a learned embedding, not the encoder)."""
        return self._pack(model, projector_input, image_inputs, float("nan"))

    def token_cells(self, model, image_inputs, n_tokens):
        """The base (global) view's patch grid; the high-resolution tiles' tokens and the newlines get -1 (they
        are stored and used where no grid is needed, but have no cell of the base grid)."""
        cfg = model.config
        side = int(cfg.vision_config.image_size) // int(cfg.vision_config.patch_size)
        cls = 0 if cfg.vision_feature_select_strategy == "default" else 1
        tiles = self._tiles(model, image_inputs)
        T = side * side + cls
        # pack (is a high-resolution tile, token index in its tile) exactly as the model packs its features
        hires = torch.cat([torch.tensor([0.0] + [1.0] * (n - 1)) for n in tiles])[:, None].expand(-1, T)
        index = torch.arange(T, dtype=torch.float64).expand(len(hires), T) - cls
        packed = self._pack(model, torch.stack([hires.double(), index], -1), image_inputs, float("nan"))
        out = []
        for p, n in zip(packed, n_tokens):
            if len(p) != n:
                raise ValueError(f"packed {len(p)} tokens but the prompt holds {n} image tokens")
            base = (p[:, 0] == 0) & (p[:, 1] >= 0)  # NaN (newline) compares False
            out.append(torch.where(base, p[:, 1].nan_to_num(-1), -1.0).long().numpy())
        return (side, side), out

    def _tiles(self, model, image_inputs) -> list[int]:
        from transformers.models.llava_next.modeling_llava_next import (
            image_size_to_num_patches,
        )

        cfg = model.config
        return [image_size_to_num_patches(s.tolist(), cfg.image_grid_pinpoints, cfg.vision_config.image_size)
                for s in image_inputs["image_sizes"]]
