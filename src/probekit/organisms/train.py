"""Training the from-scratch organisms by name: run the recipe, save, re-load and evaluate (dev and test
halves), write the card. ``probekit train-organism NAME`` calls :func:`train_organism` / :func:`train_all`."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from . import ORGANISMS
from .card import write_card
from .spec import Recipe


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
