"""Extraction in float32 vs bfloat16: time, and what bfloat16 changes in the stores.

    .venv/bin/python benchmarks/bench_dtype.py [--model smol-llava-ft] [--per-class 10] [--repeats 2]

The book's chapters 1-4 run their models in bfloat16 (on a CPU with bfloat16 matrix units, AMX or AVX512-BF16,
oneDNN runs those matmuls several times faster than float32). This script measures that choice on the book's own
images and prompts (:func:`probekit.prompts.book_prompts` on the two-domain set, ``--per-class`` images per class
of each domain): both dtypes extract the same images, interleaved ``--repeats`` times, one torch thread; it prints
both times and their ratio (median over the pairs), the relative difference of the stored states per layer
(``|h_bf16 - h_fp32| / |h_fp32|`` over all images and prompts), and on how many (image, prompt) pairs the
preferred answer differs, with each dtype's accuracy per prompt and domain.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from probekit.data import two_domain_dataset  # noqa: E402
from probekit.extract import extract  # noqa: E402
from probekit.models import load_model  # noqa: E402
from probekit.prompts import book_prompts  # noqa: E402

DTYPES = ("float32", "bfloat16")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smol-llava-ft")
    ap.add_argument("--per-class", type=int, default=10, help="images per class of each domain")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    data = two_domain_dataset("fashion-mnist", None, a.per_class, 0, contrast="digits")
    variants = book_prompts(data.concept, data.negation)
    models = {d: load_model(a.model, dtype=d, device="cpu") for d in DTYPES}
    print(f"torch {torch.__version__}, {a.threads} thread(s), cpu capability {torch.backends.cpu.get_cpu_capability()}"
          f"; {a.model}; {len(data)} images x {len(variants)} prompts")
    times, stores = {d: [] for d in DTYPES}, {}
    with tempfile.TemporaryDirectory() as tmp:
        warm = dataclasses.replace(data, items=data.items[:2])
        for d in DTYPES:  # warm-up (allocator, oneDNN kernels)
            extract(models[d], warm, variants, Path(tmp) / f"warm-{d}", progress=False, batch_variants=True)
        for r in range(a.repeats):
            for d in DTYPES:
                t0 = time.perf_counter()
                stores[d] = extract(models[d], data, variants, Path(tmp) / f"{d}-{r}", progress=False,
                                    batch_variants=True)
                times[d].append(time.perf_counter() - t0)
        ratios = [f / b for f, b in zip(times["float32"], times["bfloat16"])]
        print(f"float32 {statistics.median(times['float32']):.1f} s, bfloat16 {statistics.median(times['bfloat16']):.1f} s"
              f" (medians of {a.repeats}); ratio {statistics.median(ratios):.2f}x "
              f"(pairs: {', '.join(f'{x:.2f}' for x in ratios)})")
        f32, b16 = stores["float32"], stores["bfloat16"]
        names = f32.variant_names
        x = np.stack([f32.features(v) for v in names])  # [V, n, L+1, d]
        y = np.stack([b16.features(v) for v in names])
        rel = np.linalg.norm((x - y).transpose(2, 0, 1, 3).reshape(x.shape[2], -1), axis=1) / \
            np.linalg.norm(x.transpose(2, 0, 1, 3).reshape(x.shape[2], -1), axis=1)
        print("relative state difference by layer: " + ", ".join(f"{l}: {r:.4f}" for l, r in enumerate(rel)
                                                                 if l % 5 == 0 or l == len(rel) - 1))
        k = data.domain_split  # labels below it show the concept: the correct answer is the variant's expected one
        shows = {}
        for d, st in stores.items():
            t = st.answers()
            t["image shows"] = np.where(t.label < k, data.concept, data.negation)
            t["correct"] = np.where(t.label < k, t.margin > 0, t.margin < 0)
            shows[d] = t
        keys = ["id", "variant", "image shows"]
        both = shows["float32"][keys + ["correct", "preferred"]].merge(
            shows["bfloat16"][keys + ["correct", "preferred"]], on=keys, suffixes=("_fp32", "_bf16"))
        both["differs"] = both.preferred_fp32 != both.preferred_bf16
        table = both.groupby(["variant", "image shows"], sort=False).agg(
            n=("differs", "size"), correct_fp32=("correct_fp32", "mean"), correct_bf16=("correct_bf16", "mean"),
            answers_differ=("differs", "sum"))
        print(table.round(3).to_string())
        print(f"preferred answer differs on {int(both.differs.sum())} of {len(both)} (image, prompt) pairs")


if __name__ == "__main__":
    main()
