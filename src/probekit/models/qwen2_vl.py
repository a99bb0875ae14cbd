"""Qwen2-VL and Qwen2.5-VL (dynamic resolution, multimodal rotary positions).

The processor returns ``image_grid_thw``; the number of image tokens depends on image size. The decoder's
rotary positions are 3-D (temporal, height, width) for image tokens: the model computes them from
``input_ids``, ``image_grid_thw`` and ``attention_mask`` (``model.model.get_rope_index``), so a forward pass on
a full prompt needs nothing extra.
"""

from .base import Adapter


class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl"
    architectures = ("Qwen2VLForConditionalGeneration",)


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    family = "qwen2_5_vl"
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
