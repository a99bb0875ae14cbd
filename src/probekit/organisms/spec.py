"""What determines an organism: the :class:`Recipe` dataclass, on its own.

It lives apart from :mod:`probekit.organisms.recipe` (which runs the recipe, with torch) so that the
registry ``probekit.organisms.ORGANISMS`` -- and with it ``probekit --help`` and the CLI's choices --
is importable without torch or transformers. ``probekit.organisms.recipe.Recipe`` is this class.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that determines an organism. Controlled variants change exactly one group of fields."""

    name: str
    family: str = "llava"
    summary: str = ""
    base: str | None = None  # the organism this one is a controlled variant of
    controlled_factor: str | None = None  # 'tokenizer', 'instruction data', 'pretraining corpus'
    seed: int = 0
    # tokenizer (trained with `tokenizers` on `tokenizer_corpus`)
    tokenizer_kind: str = "bpe"
    vocab_size: int = 2048
    lowercase: bool = False
    tokenizer_corpus: str = "debian-docs"
    # decoder pretraining text
    lm_corpus: str = "debian-docs"
    corpus_chars: int = 1_200_000
    # architecture
    text_layers: int = 8
    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    intermediate: int = 288
    vision_layers: int = 4
    vision_hidden: int = 128
    vision_heads: int = 4
    vision_intermediate: int = 384
    image_size: int = 28
    patch_size: int = 7
    # phase 1: vision tower
    vision_steps: int = 2400
    vision_batch: int = 128
    vision_lr: float = 2e-3
    # phase 2: decoder LM pretraining
    lm_steps: int = 150
    lm_batch: int = 16
    lm_seq: int = 128
    lm_lr: float = 2e-3
    # phase 3: projector alignment
    align_steps: int = 60
    align_batch: int = 32
    align_lr: float = 2e-3
    # phase 4: instruction tuning
    instruct_steps: int = 1500
    instruct_batch: int = 32
    instruct_lr: float = 1.5e-3
    instruct_mix: tuple[tuple[str, float], ...] = (
        ("concept_yn", 0.22), ("concept_10", 0.13), ("concept_tf", 0.05), ("class_yn", 0.2), ("naming", 0.4))
    instruct_images: int | None = None  # distinct Fashion-MNIST train images (None = all 60,000)
    digits_fraction: float = 0.3
    # evaluation: Fashion-MNIST images per class of the held-out dev / test half; all of the digits' half
    eval_per_class: int = 100

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["instruct_mix"] = dict(self.instruct_mix)
        return d
