"""Qwen2-VL and Qwen2.5-VL (dynamic resolution, multimodal rotary positions).

The processor returns ``image_grid_thw``; the number of image tokens depends on image size. The decoder's
rotary positions are 3-D (temporal, height, width) for image tokens: the model computes them from
``input_ids``, ``image_grid_thw`` and ``attention_mask`` (``model.model.get_rope_index``), so a forward pass on
a full prompt needs nothing extra. A suffix run on a cached prefix gets its slice of the positions
``get_rope_index`` computes for the whole prompt (text after an image does not continue at the cache length).
"""

import numpy as np
import torch

from .base import Adapter


class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl"
    architectures = ("Qwen2VLForConditionalGeneration",)

    def suffix_position_ids(self, model, prefix_inputs, suffix_ids):
        prefix = prefix_inputs["input_ids"]
        ids = torch.cat([prefix, suffix_ids], 1)
        mm = prefix_inputs.get("mm_token_type_ids")
        if mm is None:
            mm = (prefix == model.config.image_token_id).int()
        mm = torch.cat([mm, torch.zeros_like(suffix_ids, dtype=mm.dtype)], 1)
        pos, _ = model.model.get_rope_index(input_ids=ids, mm_token_type_ids=mm,
                                            image_grid_thw=prefix_inputs.get("image_grid_thw"),
                                            attention_mask=torch.ones_like(ids))
        return pos[..., prefix.shape[1]:]

    def training_parts(self, model):
        """Qwen2-VL's tower without its patch merger is the vision part; the merger is the projector."""
        inner = model.model
        return {"vision": [inner.visual.patch_embed, inner.visual.blocks], "projector": [inner.visual.merger],
                "decoder": [inner.language_model, model.lm_head]}

    def pooled_vision_features(self, model, image_inputs):
        """The mean of each image's merged patch tokens (no CLS token)."""
        thw = image_inputs["image_grid_thw"]
        h = model.model.visual(image_inputs["pixel_values"], grid_thw=thw).last_hidden_state
        return torch.stack([c.mean(0) for c in torch.split(h, thw.prod(-1).tolist())])

    def projector(self, model):
        """The patch merger: it takes the last vision block's output (``spatial_merge_size``² patches per image
        token)."""
        return model.model.visual.merger

    def _merge_order(self, model, image_inputs) -> torch.Tensor | None:
        """Permutation from the merger's input order to the processor's, per merge unit (None: the same)."""
        return None

    def vision_tokens(self, model, projector_input, image_inputs):
        """The merger's input regrouped as it regroups it: the ``m x m`` patch states of each image token's block,
        concatenated (``[T_i, m² d_v]``), in the image tokens' order."""
        m = int(model.config.vision_config.spatial_merge_size)
        x = projector_input.reshape(-1, m * m * projector_input.shape[-1])
        order = self._merge_order(model, image_inputs)
        if order is not None:
            x = x[order.to(x.device)]
        counts = (image_inputs["image_grid_thw"].prod(-1) // (m * m)).tolist()
        return list(torch.split(x, counts, dim=0))

    def token_cells(self, model, image_inputs, n_tokens):
        """One image token per ``m x m`` block of patches, blocks row-major (the processor's order); the grid is
        ``(h/m, w/m)`` of the image's patch grid (the same for every image of one size)."""
        m = int(model.config.vision_config.spatial_merge_size)
        thw = image_inputs["image_grid_thw"].tolist()
        grids = {(h // m, w // m) for _, h, w in thw}
        if len(grids) != 1:
            raise ValueError(f"images of different sizes give different token grids {sorted(grids)}")
        rows, cols = grids.pop()
        out = []
        for (t, _, _), n in zip(thw, n_tokens):
            if n != t * rows * cols:
                raise ValueError(f"{n} image tokens for a {t}x{rows}x{cols} token grid")
            out.append(np.tile(np.arange(rows * cols), t).astype(np.int64))
        return (rows, cols), out

    def patch_positions(self, model, image_inputs):
        """The processor's patch order: ``merge x merge`` blocks row-major and row-major inside a block, repeated
        over the temporal patches (Qwen2.5-VL: :meth:`vision_hidden_states` has undone the window permutation)."""
        m = int(getattr(model.config.vision_config, "spatial_merge_size", 2))
        out = []
        for t, h, w in image_inputs["image_grid_thw"].tolist():
            rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
            rr = rr.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).ravel()
            cc = cc.reshape(h // m, m, w // m, m).transpose(0, 2, 1, 3).ravel()
            pos = np.stack([(rr + 0.5) / h, (cc + 0.5) / w], 1)
            out.append(np.tile(pos, (t, 1)))
        return out

    def vision_hidden_states(self, model, image_inputs):
        """The vision blocks' states; Qwen's vision tower has no CLS token and takes all images' patches as
        one flat sequence, split back per image by ``image_grid_thw``."""
        visual = model.model.visual
        pv = image_inputs["pixel_values"].to(next(visual.parameters()).dtype)
        thw = image_inputs["image_grid_thw"]
        out = visual(pv, grid_thw=thw, output_hidden_states=True)
        hs = torch.stack(out.hidden_states, dim=0)  # [V+1, sum(t*h*w), d]
        return list(torch.split(hs, thw.prod(-1).tolist(), dim=1))


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)

    def _merge_order(self, model, image_inputs):
        """The merger sees the merge units in attention-window order; the model undoes it after the merger
        (``argsort(window_index)``), and so does this."""
        from transformers.vision_utils import get_vision_window_index

        cfg = model.model.visual.config
        window_index, _ = get_vision_window_index(image_inputs["image_grid_thw"], cfg.spatial_merge_size,
                                                  cfg.window_size, cfg.patch_size)
        return torch.argsort(window_index)

    def vision_hidden_states(self, model, image_inputs):
        """As Qwen2-VL, put back in the processor's patch order: Qwen2.5-VL's tower permutes the patches into
        attention windows before its first block, and every recorded hidden state is in that window order."""
        from transformers.vision_utils import get_vision_window_index

        visual = model.model.visual
        pv = image_inputs["pixel_values"].to(next(visual.parameters()).dtype)
        thw = image_inputs["image_grid_thw"]
        out = visual(pv, grid_thw=thw, output_hidden_states=True)
        hs = torch.stack(out.hidden_states, dim=0)  # [V+1, sum(t*h*w), d], window order
        cfg = visual.config
        window_index, _ = get_vision_window_index(thw, cfg.spatial_merge_size, cfg.window_size, cfg.patch_size)
        unit = cfg.spatial_merge_size**2
        perm = (window_index[:, None] * unit + torch.arange(unit)).flatten().to(hs.device)
        natural = torch.empty_like(hs)
        natural[:, perm] = hs
        return list(torch.split(natural, thw.prod(-1).tolist(), dim=1))
