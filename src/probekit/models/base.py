"""What every model family shares; a family adapter overrides only what differs."""

from __future__ import annotations

from typing import ClassVar

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

    def position_ids(self, model, inputs) -> torch.Tensor | None:
        """Explicit position ids for a forward pass; ``None`` lets the model compute them."""
        return None
