"""Model organisms: small multimodal LLMs of real transformers classes, trained by probekit on CPU
from real images (Fashion-MNIST + scikit-learn's digits) and shipped as the embedded default model.

They are *organisms*, not LLaVA or Qwen2-VL: they share those models' classes, processors, chat
templates and training recipe shape, at a laptop scale. Results on them are results on organisms.

    from probekit.organisms import ORGANISMS, organism_path, train_organism
    organism_path("llava-organism")            # the shipped save_pretrained directory (or None)
    train_organism("llava-organism", "out/")   # re-run the recipe (~15 min on 2 cores)

Shipped: ``llava-organism`` (the default of every entry point), ``qwen2vl-organism`` (Qwen2-VL class,
different decoder depth), and three controlled variants of ``llava-organism`` that each change exactly
one factor: ``llava-organism-tokenizer``, ``llava-organism-instruct``, ``llava-organism-corpus``.
"""

from __future__ import annotations

import dataclasses
import os
import time
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


def _fmt_acc(x: float) -> str:
    return f"{100 * x:.1f} %"


def sha256_file(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_note(report: dict) -> str:
    """What the machine was doing while the organism trained (1-min load average at start and end)."""
    load = report.get("load_average_1min")
    if not load:
        return "The machine's load during training was not recorded."
    return (f"1-min load average {load['start']:.1f} at the start and {load['end']:.1f} at the end of training on "
            f"{load.get('cores', '?')} cores: with one torch thread and a load at or below the core count, the wall "
            "time is that of an otherwise idle core; above it, the wall time is inflated and the CPU time is the better "
            "measure.")


def write_card(out_dir: Path, recipe: Recipe, report: dict, metrics: dict) -> Path:
    """README.md model card: recipe, data, seed, parameter count, training time, held-out accuracy."""
    out_dir = Path(out_dir)
    size = sum(p.stat().st_size for p in out_dir.glob("*.safetensors"))
    ph = report["phases"]
    r = recipe
    lines = [
        f"# {r.name}",
        "",
        f"A **model organism** trained by probekit — not LLaVA, not Qwen2-VL, and nothing here is a result of "
        f"those models. {r.summary}",
        "",
    ]
    if r.base:
        lines += [f"Controlled variant of `{r.base}`: changes exactly one factor, the **{r.controlled_factor}**.", ""]
    lines += [
        "## Facts",
        "",
        f"- class: `{'LlavaForConditionalGeneration' if r.family == 'llava' else 'Qwen2VLForConditionalGeneration'}` "
        f"(transformers), processor saved alongside (`AutoProcessor.from_pretrained`)",
        f"- parameters: {report['parameters']:,}",
        f"- safetensors size: {size:,} bytes ({size / 2**20:.2f} MiB), float32; sha256 "
        + ", ".join(f"`{sha256_file(p)}`" for p in sorted(out_dir.glob("*.safetensors")))
        + (f" — {report['reproduced']}" if report.get("reproduced") else ""),
        f"- seed: {r.seed}",
        f"- training time (measured): {report['train_seconds']:.0f} s wall = {report['train_seconds'] / 60:.1f} min, "
        f"process CPU time {report['train_cpu_seconds']:.0f} s = {report['train_cpu_seconds'] / 60:.1f} min (user+sys), "
        f"torch threads: {report['torch_threads']} ({report.get('machine', '')}). {load_note(report)}",
        f"- tokenizer: {report['tokenizer']['kind']}, {report['tokenizer']['vocab']:,} entries, trained with `tokenizers` "
        f"on the `{report['tokenizer']['corpus']}` corpus ({report['tokenizer']['chars']:,} chars, sha256 "
        f"{report['tokenizer']['sha256'][:12]}...)",
        f"- answer format: the chat template's assistant turn, answer prefix {report['answer_format']['prefix']!r}, "
        f"ends with `{report['answer_format']['end_token']}`",
        "",
        "## Recipe (`probekit train-organism " + r.name + "`)",
        "",
        "| phase | what is trained | data | steps x batch | lr | time |",
        "|---|---|---|---|---|---|",
        f"| setup | tokenizer | corpus | - | - | {ph['setup']['seconds']:.0f} s |",
        f"| 1 vision | vision tower (+ throwaway 20-way linear head), then frozen | Fashion-MNIST train + digits "
        f"train, class labels | {r.vision_steps} x {r.vision_batch} | {r.vision_lr} | {ph['vision']['seconds']:.0f} s |",
        f"| 2 lm | decoder (embeddings, blocks, LM head) | `{r.lm_corpus}` text, {report['lm_corpus']['tokens']:,} "
        f"tokens, {r.lm_seq}-token windows | {r.lm_steps} x {r.lm_batch} | {r.lm_lr} | {ph['lm']['seconds']:.0f} s |",
        f"| 3 align | projector only | brief captions (\"a photo of a sneaker\") | {r.align_steps} x {r.align_batch} | "
        f"{r.align_lr} | {ph['align']['seconds']:.0f} s |",
        f"| 4 instruct | projector + decoder | (image, question, answer), mix {dict(r.instruct_mix)} | "
        f"{r.instruct_steps} x {r.instruct_batch} | {r.instruct_lr} | {ph['instruct']['seconds']:.0f} s |",
        "",
        "Loss (mean of first / last steps): " + "; ".join(
            f"{k} {v['loss_first']} -> {v['loss_last']}" for k, v in ph.items() if "loss_first" in v) + ".",
        "",
        "## Data",
        "",
        f"- images: Fashion-MNIST **train** split ({report['instruct_fashion_images']:,} images in instruction "
        f"tuning; all 60,000 in phases 1 and 3) and scikit-learn digits, seeded 2/3 train split "
        f"({report['instruct_digit_images']} images), {r.digits_fraction:.0%} of examples are digits. "
        "Fashion-MNIST **test** and the held-out third of the digits are never trained on; each is cut per class "
        "into a **dev** half (the split any training decision was made on, e.g. the vision phase's length) and a "
        "**test** half (the numbers below; never used for a decision).",
        "- instruction questions: yes/no, 1/0 and true/false questions about the domain concept ('a fashion item', "
        "'a handwritten digit' — asked of both domains, so negative answers exist), about classes ('a sneaker'), "
        "and naming ('What is in this image?' -> class name), from the training bank listed below. **Paper A's probe "
        "prompts are held out**: none of their questions ('Does this image show X?', 'Does this picture show X?', "
        "'Does this image feature X?', for any X) and neither instruction sentence ('The answer must be always yes "
        "or no.' / '... 1 or 0.') occurs in any training text (tested: `tests/test_organisms.py`).",
        f"- decoder text: `{r.lm_corpus}` ({report['lm_corpus']['chars']:,} chars incl. task-vocabulary sentences, "
        f"sha256 {report['lm_corpus']['sha256'][:12]}...), composed from files on the machine, no downloads.",
        "",
        "Training templates (`probekit.organisms.tasks.training_templates()`; `{thing}` is a concept or class "
        "phrase, `{p}` a class phrase):",
        "",
    ]
    from .tasks import training_templates

    for kind, ts in training_templates().items():
        lines.append(f"- {kind}: " + "; ".join(f"`{t}`" for t in ts))
    lines += [
        "",
        "## Held-out behaviour",
        "",
        "Answer accuracy = share of images on which the model prefers the correct answer, read as the book reads it "
        "(each answer's best token sequence, teacher-forced after the generation prompt: `probekit.organisms."
        "evaluate`), on every probe prompt (`probekit.prompts.probe_prompts`) and on five paraphrases no organism "
        "trained on; naming = exact class name by greedy decoding. **Test** half:",
        "",
    ]
    lines += _metrics_table(metrics)
    fm = metrics.get("fashion-mnist/test", {})
    answers = {k: m[k] for m in metrics.values() for k in _answer_keys(m)}
    worst_by = {k: min(m[k] for m in metrics.values()) for k in answers}
    if worst_by:
        worst = min(worst_by, key=worst_by.get)
        met = "met" if worst_by[worst] >= 0.95 else "NOT met"
        lines += ["", f"Targets on the test half: answers >= 95 % on every probe prompt, both domains — {met} (lowest: "
                  f"{worst} {_fmt_acc(worst_by[worst])}); naming >= 80 % on Fashion-MNIST — "
                  f"{'met' if fm.get('naming', 0) >= 0.8 else 'NOT met'} ({_fmt_acc(fm.get('naming', 0))})."]
    if report.get("dev"):
        lines += ["", "Dev half (what training decisions were made on):", ""] + _metrics_table(report["dev"])
    lines += ["", "Full numbers: `organism.json`."]
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")
    return out_dir / "README.md"


def _answer_keys(m: dict) -> list[str]:
    return [k for k, v in m.items() if isinstance(v, float) and k != "naming"]


def _metrics_table(metrics: dict) -> list[str]:
    """One row per held-out set: n, concept, every probe prompt, the paraphrases' lowest, naming."""
    first = next(iter(metrics.values()))
    keys = _answer_keys(first)
    lines = ["| images | n | concept | " + " | ".join(keys) + " | paraphrases (lowest) | naming |",
             "|---|---|---|" + "---|" * (len(keys) + 2)]
    for name, m in metrics.items():
        para = m.get("paraphrases") or {}
        low = min(para, key=para.get) if para else None
        lines.append(f"| {name} | {m['n']} | {m['concept_text']} | " + " | ".join(_fmt_acc(m[k]) for k in keys)
                     + f" | {f'{_fmt_acc(para[low])} ({low})' if low else '—'} | "
                     + (_fmt_acc(m['naming']) if 'naming' in m else '—') + " |")
    return lines


def _machine() -> str:
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores visible, torch {__import__('torch').__version__}"


def vision_cache_dir() -> Path:
    """Where phase 1's towers are shared between organisms (``$PROBEKIT_CACHE/organism-vision``)."""
    return Path(os.environ.get("PROBEKIT_CACHE", Path.home() / ".cache" / "probekit")) / "organism-vision"


def train_organism(name: str | Recipe, out_dir=None, *, seed: int | None = None, log=print,
                   evaluate_after: bool = True, threads: int | None = None, share_vision: bool = True) -> Path:
    """Train organism ``name`` per its recipe, ``save_pretrained`` model + processor to ``out_dir``
    (default ``./organisms/<name>``; the shipped copies live in ``shipped_dir(name)``), evaluate it on
    held-out images after re-loading it from disk, and write ``README.md`` (card) + ``organism.json``.

    ``threads`` sets ``torch.set_num_threads`` (the shipped organisms were trained with 1 thread: on a
    2-core machine shared with other jobs, 2 threads stalled at OpenMP barriers and ran ~5x slower).
    ``share_vision``: phase 1 (the vision tower) is restored from :func:`vision_cache_dir` when an organism with
    the same phase-1 key trained it before (the same bits as training it again), else trained and stored.
    """
    import torch

    from .recipe import run_recipe, save, write_metadata

    recipe = name if isinstance(name, Recipe) else ORGANISMS.get(name)
    if recipe is None:
        raise KeyError(f"unknown organism {name!r}; known: {', '.join(ORGANISMS)}")
    if seed is not None and seed != recipe.seed:
        recipe = dataclasses.replace(recipe, seed=seed)
    out_dir = Path(out_dir) if out_dir is not None else Path("organisms") / recipe.name
    if threads:
        torch.set_num_threads(threads)
    load_start = os.getloadavg()[0]
    model, processor, report = run_recipe(recipe, log=log, vision_cache=vision_cache_dir() if share_vision else None)
    report["machine"] = _machine()
    report["load_average_1min"] = {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2),
                                   "cores": os.cpu_count()}
    save(model, processor, out_dir)
    log(f"[save] {out_dir} after {report['train_seconds']:.0f} s of training")
    metrics = {}
    if evaluate_after:
        metrics = _evaluate_saved(out_dir, recipe, report, log)
    report["held_out"] = metrics
    write_metadata(out_dir, recipe, report)
    if metrics:
        write_card(out_dir, recipe, report, metrics)
    return out_dir


def _evaluate_saved(out_dir: Path, recipe: Recipe, report: dict, log) -> dict:
    """Evaluate a saved organism after re-loading it from disk: the dev half (the split for training decisions,
    kept in ``report['dev']``) and the test half (returned: what the card reports)."""
    from transformers import AutoProcessor

    from ..models.build import MODEL_CLASSES
    from .evaluate import evaluate

    t = time.perf_counter()
    loaded = MODEL_CLASSES[recipe.family].from_pretrained(out_dir)
    processor = AutoProcessor.from_pretrained(out_dir)
    report["dev"] = evaluate(loaded, processor, split="dev", per_class=recipe.eval_per_class, log=log)
    test = evaluate(loaded, processor, split="test", per_class=recipe.eval_per_class, log=log)
    report["eval_seconds"] = round(time.perf_counter() - t, 1)
    return test


def rewrite_card(out_dir) -> Path:
    """Rewrite README.md from ``organism.json`` (no training, no evaluation)."""
    import json

    meta = json.loads((Path(out_dir) / "organism.json").read_text())
    rd = dict(meta.pop("recipe"))
    rd["instruct_mix"] = tuple(rd["instruct_mix"].items())
    return write_card(Path(out_dir), Recipe(**rd), meta, meta["held_out"])


def refresh_card(out_dir, *, log=print) -> Path:
    """Re-evaluate a trained organism directory (after loading it from disk) and rewrite its card and
    ``organism.json`` held-out numbers; the recipe and training report are kept."""
    import json

    from .recipe import write_metadata

    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "organism.json").read_text())
    rd = dict(meta.pop("recipe"))
    rd["instruct_mix"] = tuple(rd["instruct_mix"].items())
    recipe = Recipe(**rd)
    meta["held_out"] = _evaluate_saved(out_dir, recipe, meta, log)
    write_metadata(out_dir, recipe, meta)
    return write_card(out_dir, recipe, meta, meta["held_out"])


def train_all(out_root=None, *, seed: int | None = None, log=print, names=None, threads: int | None = None) -> list[Path]:
    """Train every organism (or ``names``) into ``out_root/<name>`` (default ``./organisms``), one after another."""
    root = Path(out_root) if out_root is not None else Path("organisms")
    return [train_organism(n, root / n, seed=seed, log=log, threads=threads) for n in (names or ORGANISMS)]


# The registry (``ORGANISMS`` & co.) imports without torch -- the CLI builds its choices and help from it --
# so the recipe module (torch, transformers) is imported only by the functions that train or evaluate, and
# the two helpers re-exported from it resolve on first access (PEP 562).
_FROM_RECIPE = ("count_parameters",)


def __getattr__(name: str):
    if name in _FROM_RECIPE:
        from . import recipe

        return getattr(recipe, name)
    if name == "evaluate":
        from .evaluate import evaluate

        return evaluate
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_FROM_RECIPE, "evaluate"})


__all__ = [
    "DEFAULT_ORGANISM",
    "ORGANISMS",
    "Recipe",
    "SHIPPED_DIR",
    "count_parameters",
    "evaluate",
    "organism_path",
    "refresh_card",
    "shipped_dir",
    "train_all",
    "train_organism",
]
