"""LLaVA-1.5 style: CLIP vision tower, MLP projector, Llama/Vicuna/Mistral decoder (``LlavaForConditionalGeneration``)."""

from .base import Adapter


class LlavaAdapter(Adapter):
    family = "llava"
    architectures = ("LlavaForConditionalGeneration",)
