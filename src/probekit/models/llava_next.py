"""LLaVA-NeXT (any-resolution tiling; ``LlavaNextForConditionalGeneration``).

The processor returns ``image_sizes`` beside ``pixel_values``; the number of image tokens depends on the
image's aspect ratio, so prompts of one batch can differ in length (right padding handles it).
"""

from .base import Adapter


class LlavaNextAdapter(Adapter):
    family = "llava_next"
    architectures = ("LlavaNextForConditionalGeneration",)
