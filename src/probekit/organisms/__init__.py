"""Model organisms: small multimodal LLMs of real transformers classes, trained by probekit on CPU
from real images (Fashion-MNIST + scikit-learn's digits) and shipped as the embedded default model.

They are *organisms*, not LLaVA or Qwen2-VL: they share those models' classes, processors, chat
templates and training recipe shape, at a laptop scale. Results on them are results on organisms.

    from probekit.organisms import ORGANISMS, organism_path
    organism_path("llava-organism")            # the shipped save_pretrained directory (or None)

    from probekit.organisms.train import train_organism
    train_organism("llava-organism", "out/")   # re-run the recipe

This module is the registry only (it imports no torch, and nothing of probekit that runs a model): the recipe
(:mod:`.recipe`), the training entry points (:mod:`.train`), the one evaluator (:mod:`.evaluate`), the one card
writer (:mod:`.card`) and the realistic organism (:mod:`.smol_llava`) live beside it.

Shipped: ``llava-organism`` (the default of every entry point), ``qwen2vl-organism`` (Qwen2-VL class,
different decoder depth), and three controlled variants of ``llava-organism`` that each change exactly
one factor: ``llava-organism-tokenizer``, ``llava-organism-instruct``, ``llava-organism-corpus``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .spec import Recipe

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
DEFAULT_ORGANISM = "llava-organism"

_LLAVA = Recipe(
    name="llava-organism",
    family="llava",
    summary="LlavaForConditionalGeneration: 4-layer CLIP vision tower (patch 7 on 28 px, 16 image tokens), "
            "2-layer MLP projector, 8-layer Llama decoder, byte-level BPE tokenizer.",
)

ORGANISMS: dict[str, Recipe] = {
    r.name: r
    for r in (
        _LLAVA,
        dataclasses.replace(
            _LLAVA,
            name="qwen2vl-organism",
            family="qwen2_vl",
            summary="Qwen2VLForConditionalGeneration: 4-layer Qwen2-VL vision tower (patch 7 on 28 px, 16 patches; "
                    "its 2x2 patch merger is the projector, 4 image tokens), 6-layer Qwen2 decoder with M-RoPE, "
                    "byte-level BPE tokenizer.",
            text_layers=6,
            image_size=28,
            patch_size=7,
        ),
        dataclasses.replace(
            _LLAVA,
            name="llava-organism-tokenizer",
            base="llava-organism",
            controlled_factor="tokenizer",
            summary="llava-organism with a different tokenizer: WordPiece, 1,024 entries, lowercased "
                    "(llava-organism: byte-level BPE, 2,048). Everything else identical.",
            tokenizer_kind="wordpiece",
            vocab_size=1024,
            lowercase=True,
        ),
        dataclasses.replace(
            _LLAVA,
            name="llava-organism-instruct",
            base="llava-organism",
            controlled_factor="instruction data",
            summary="llava-organism with different instruction-tuning data: a 10,000-image Fashion-MNIST subset "
                    "and a mix without class-level yes/no questions (naming-heavy). Everything else identical.",
            instruct_images=10_000,
            instruct_mix=(("concept_yn", 0.3), ("concept_10", 0.2), ("concept_tf", 0.05), ("naming", 0.45)),
        ),
        dataclasses.replace(
            _LLAVA,
            name="llava-organism-corpus",
            base="llava-organism",
            controlled_factor="pretraining corpus",
            summary="llava-organism whose decoder is pretrained on Python standard-library docstrings instead of "
                    "Debian documentation (same tokenizer, trained on the Debian corpus). Everything else identical.",
            lm_corpus="python-docstrings",
        ),
        *(dataclasses.replace(
            _LLAVA,
            name=f"llava-organism-seed{k}",
            base="llava-organism",
            controlled_factor="training seed",
            summary=f"llava-organism trained with seed {k} (initial weights, tokenizer-independent sampling of "
                    "images and questions); recipe otherwise identical: a replicate for the noise floor between "
                    "organisms that differ only in training seed.",
            seed=k,
        ) for k in (1, 2)),
    )
}
SEED_REPLICATES = ("llava-organism", "llava-organism-seed1", "llava-organism-seed2")


def shipped_dir(name: str) -> Path:
    return SHIPPED_DIR / name


def organism_path(name: str) -> Path | None:
    """The shipped ``save_pretrained`` directory of organism ``name``, or None if ``name`` is not a
    shipped organism (or its weights are absent)."""
    if name not in ORGANISMS:
        return None
    path = shipped_dir(name)
    return path if (path / "config.json").is_file() and any(path.glob("*.safetensors")) else None


def trained_recipe(name: str) -> dict | None:
    """The recipe the shipped weights of ``name`` were actually trained with (its ``organism.json``), which can
    differ from the registry's current recipe for an organism not yet retrained; None if none is recorded."""
    import json

    path = shipped_dir(name) / "organism.json"
    return json.loads(path.read_text()).get("recipe") if path.is_file() else None


RECIPE_METADATA = ("name", "summary", "base", "controlled_factor")


def recipe_confounds(model: str, reference: str) -> dict[str, tuple]:
    """Where the shipped ``model`` and ``reference`` were trained differently *beyond* what the registry says they
    differ in (field -> (model's value, reference's value)); empty for a clean controlled pair. A pair shipped from
    two recipe generations (one retrained, one not) is confounded in every changed field."""
    a, b = trained_recipe(model), trained_recipe(reference)
    if a is None or b is None or model not in ORGANISMS or reference not in ORGANISMS:
        return {}
    ra, rb = dataclasses.asdict(ORGANISMS[model]), dataclasses.asdict(ORGANISMS[reference])
    intended = {k for k in ra if ra[k] != rb.get(k)}
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in intended and k not in RECIPE_METADATA}


__all__ = ["DEFAULT_ORGANISM", "ORGANISMS", "Recipe", "SEED_REPLICATES", "SHIPPED_DIR", "organism_path",
           "recipe_confounds", "shipped_dir", "trained_recipe"]
