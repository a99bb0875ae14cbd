"""Extraction: one forward per (image, variant) prompt (naive) vs probekit's shared-prefix reuse.

    .venv/bin/python benchmarks/bench_extract.py

Runs ``extract(..., reuse_prefix=False)`` and ``extract(...)`` (reuse, the default) on the same images,
variants and batch size, interleaved, and prints both times, their ratio, the ideal ratio from the language
model's token counts (naive: every prompt whole; reuse: the prefix once per image + every suffix) and the
largest difference between the two stores. Models:

(a) ``llava-organism`` when ``probekit.models.load_model("llava-organism")`` works (skipped with a note if not);
(b) a tiny random-weight LLaVA with LLaVA-1.5's token counts: 336 px, patch 14 -> 576 image tokens, built offline.

Six variants: paper A's five plus a second lexical one. Both sides use the same thread count (``--threads``,
default 1, so a busy machine disturbs both alike); the ratio is the median over ``--repeats`` interleaved pairs.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from probekit.data import get_dataset  # noqa: E402
from probekit.models import load_model  # noqa: E402
from probekit.models.build import build_tiny  # noqa: E402
from probekit.prompts import Variant, paper_a_variants  # noqa: E402
from probekit.store import ActivationStore  # noqa: E402

ex = importlib.import_module("probekit.extract.hidden")
transformers.utils.logging.disable_progress_bar()


def six_variants(concept: str, negation: str) -> list[Variant]:
    vs = paper_a_variants(concept, negation)
    a = vs[0]
    return vs + [Variant("photo", "lexical", a.text.replace("image", "photo"), a.answers, a.expected)]


def token_counts(lm, variants, image) -> tuple[int, int]:
    """LM tokens per image: (naive, reuse)."""
    prompts = {v.name: ex.template(lm, v.text) for v in variants}
    plan = ex.shared_prefix(lm, prompts, image)
    full = [len(lm.processor(text=[p], images=[image], return_tensors="pt")["input_ids"][0]) for p in prompts.values()]
    suffix = sum(len(s) for s in plan.suffixes.values())
    prefix = full[0] - len(plan.suffixes[variants[0].name])
    return sum(full), prefix + suffix


def max_diff(a: ActivationStore, b: ActivationStore) -> tuple[float, float]:
    h = max(float(np.abs(a.features(v) - b.features(v)).max()) for v in a.variant_names)
    x, y = a.answers(), b.answers()
    return h, float((x.first_token == y.first_token).mean())


def bench(name: str, lm, data, variants, *, batch_size: int, repeats: int, tmp: Path) -> None:
    naive_tok, reuse_tok = token_counts(lm, variants, data[0][0])
    print(f"\n[{name}] {len(data)} images x {len(variants)} variants, batch_size {batch_size}; LM tokens per image: "
          f"naive {naive_tok}, reuse {reuse_tok} -> ideal ratio {naive_tok / reuse_tok:.2f}x", flush=True)
    for mode in (False, True):  # warm-up (allocator, lazy imports)
        ex.extract(lm, dataclasses.replace(data, items=data.items[:2]), variants, tmp / f"{name}-warm-{mode}",
                   batch_size=batch_size, progress=False, reuse_prefix=mode)
    times = {"naive": [], "reuse": []}
    stores = {}
    for r in range(repeats):
        for mode in ("naive", "reuse"):
            t0 = time.perf_counter()
            stores[mode] = ex.extract(lm, data, variants, tmp / f"{name}-{mode}-{r}", batch_size=batch_size,
                                      progress=False, reuse_prefix=mode == "reuse")
            times[mode].append(time.perf_counter() - t0)
    ratios = [n / p for n, p in zip(times["naive"], times["reuse"])]
    ratio = statistics.median(ratios)
    h, agree = max_diff(stores["naive"], stores["reuse"])
    print(f"[{name}] naive {statistics.median(times['naive']):.2f} s, reuse {statistics.median(times['reuse']):.2f} s "
          f"(medians of {repeats}); ratio {ratio:.2f}x (pairs: {', '.join(f'{x:.2f}' for x in ratios)}); "
          f"{100 * ratio / (naive_tok / reuse_tok):.0f}% of ideal")
    print(f"[{name}] max |hidden difference| {h:.1e}; first tokens equal on {100 * agree:.0f}% of prompts", flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="images per model (x 6 variants)")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass, both sides")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--text-layers", type=int, default=4, help="(b): decoder depth")
    ap.add_argument("--hidden", type=int, default=256, help="(b): decoder width")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = get_dataset("fashion-mnist", n_per_class=1)
    data = dataclasses.replace(data, items=data.items[: a.images])
    variants = six_variants(data.concept, data.negation)
    print(f"torch {torch.__version__}, {a.threads} thread(s); dataset {data.name} ({len(data)} images)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        try:
            org = load_model("llava-organism", dtype="float32", device="cpu")
        except Exception as e:  # noqa: BLE001 - any failure means: not available here yet
            print(f"\n[llava-organism] skipped: load_model('llava-organism') failed ({type(e).__name__}: "
                  f"{str(e).splitlines()[0] if str(e) else ''})")
        else:
            bench("llava-organism", org, data, variants, batch_size=a.batch_size, repeats=a.repeats, tmp=tmp)
            del org
        path = build_tiny("llava", tmp / "tiny-llava-1.5", image_size=336, patch_size=14, text_layers=a.text_layers,
                          hidden=a.hidden, heads=4, kv_heads=4, intermediate=2 * a.hidden, vision_layers=2,
                          vision_hidden=64, max_position_embeddings=4096)
        lm = load_model(str(path), dtype="float32", device="cpu")
        n_img = (lm.processor(text=[ex.template(lm, "x")], images=[data[0][0]], return_tensors="pt")["input_ids"]
                 == lm.image_token_id).sum().item()
        print(f"\ntiny LLaVA-1.5-like: 336 px, patch 14, {n_img} image tokens, {a.text_layers} x {a.hidden} decoder, "
              "2 x 64 CLIP tower")
        bench("tiny-llava-1.5", lm, data, variants, batch_size=a.batch_size, repeats=a.repeats, tmp=tmp)


if __name__ == "__main__":
    main()
