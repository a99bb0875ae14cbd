"""GPU-scale extraction, measured: the three extraction paths on a tiny real-class model and on a 1-2 B-sized
random-weight LLaVA-1.5-shaped model, with throughput ratios and the largest differences between paths.

    bash benchmarks/gpu_check.sh                 # on a machine with one GPU: under 5 minutes
    bash benchmarks/gpu_check.sh --device cpu --scale smoke   # the same code on the CPU at toy sizes

Paths (all :func:`probekit.extract.extract`, same images, variants and batch size):

- ``naive``: one forward per (image, variant) prompt (``reuse_prefix=False``, the reference);
- ``reuse``: image + shared prompt prefix once per image, each variant's suffix (with its answer rows) on the
  key/value cache, one pass per variant (the default);
- ``batched``: the same with all variants' suffixes in one pass, the prefix cache repeated per row
  (``batch_variants=True``, meant for accelerators).

Both models carry the LLaVA-1.5 stand-in's text side (:func:`probekit.models.standins.llava15_standin`: a Llama-2-like
SentencePiece tokenizer, LLaVA-1.5's chat template, a 336-px CLIP image processor: 576 image tokens), so the
answers "1"/"0" are two-token sequences, as under the real tokenizer. The large model (CLIP ViT-L/14-336-shaped
tower, Llama decoder of ``--hidden`` x ``--layers``) is built in memory with random weights on the device in
``--dtype``; nothing is downloaded or saved. Prints, per model: prompts/s of each path, ratios to ``naive`` and
the largest |difference| of hidden states and answer log-probabilities against ``naive``, and the share of
prompts whose preferred answer agrees.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SCALES = {  # name: (images, text hidden, text layers, vision hidden, vision layers)
    "gpu": (32, 2048, 16, 1024, 24),  # ~1.3 B parameters: ViT-L/14-336 tower + a 16-block, 2048-wide Llama
    "smoke": (4, 64, 2, 64, 2),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def big_llava(tiny_dir: Path, *, hidden: int, layers: int, vision_hidden: int, vision_layers: int,
              device: torch.device, dtype: torch.dtype):
    """The stand-in's config scaled to a LLaVA-1.5-shaped model, random weights built on ``device``."""
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration

    from probekit.models import ADAPTERS, LoadedModel

    cfg = AutoConfig.from_pretrained(tiny_dir)
    heads = max(1, hidden // 128)
    cfg.text_config.update(dict(hidden_size=hidden, intermediate_size=int(2.75 * hidden) // 64 * 64,
                                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                                head_dim=hidden // heads))
    vheads = max(1, vision_hidden // 64)
    cfg.vision_config.update(dict(hidden_size=vision_hidden, intermediate_size=4 * vision_hidden,
                                  num_hidden_layers=vision_layers, num_attention_heads=vheads))
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(cfg, dtype=dtype).eval()
    n = sum(p.numel() for p in model.parameters())
    lm = LoadedModel(model=model, processor=AutoProcessor.from_pretrained(tiny_dir),
                     adapter=ADAPTERS["LlavaForConditionalGeneration"], model_id=f"llava-1.5-shaped-{n / 1e9:.2f}B-random",
                     path=str(tiny_dir), revision=None, weights_sha256=f"random-init-seed-0-{n}", dtype=dtype,
                     device=device)
    return lm, n


def run_paths(name: str, lm, data, variants, *, batch_size: int, tmp: Path) -> None:
    from probekit.extract import extract

    paths = {"naive": dict(reuse_prefix=False), "reuse": {}, "batched": dict(batch_variants=True)}
    small = dataclasses.replace(data, items=data.items[:2])
    for p, kw in paths.items():  # warm-up: kernels, allocator
        extract(lm, small, variants, tmp / f"{name}-warm-{p}", batch_size=batch_size, progress=False, **kw)
    stores, secs = {}, {}
    for p, kw in paths.items():
        synchronize(lm.device)
        t0 = time.perf_counter()
        stores[p] = extract(lm, data, variants, tmp / f"{name}-{p}", batch_size=batch_size, progress=False, **kw)
        synchronize(lm.device)
        secs[p] = time.perf_counter() - t0
    n = len(data) * len(variants)
    ref = stores["naive"]
    print(f"[{name}] {len(data)} images x {len(variants)} variants, batch_size {batch_size}, {lm.dtype}, {lm.device}")
    for p, s in stores.items():
        dh = max(float(np.abs(s.features(v) - ref.features(v)).max()) for v in ref.variant_names)
        a, b = s.answers(), ref.answers()
        dl = float(np.abs(np.c_[a.logprob_expected - b.logprob_expected, a.logprob_other - b.logprob_other]).max())
        agree = float((a.preferred == b.preferred).mean())
        print(f"[{name}] {p:8s} {secs[p]:7.2f} s  {n / secs[p]:8.1f} prompts/s  x{secs['naive'] / secs[p]:5.2f} vs naive"
              f"  max|d hidden| {dh:.1e}  max|d logprob| {dl:.1e}  preferred answer agrees {100 * agree:.0f}%",
              flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cuda:N, cpu")
    ap.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on a GPU, fp32 on the CPU), float32, ...")
    ap.add_argument("--scale", choices=SCALES, help="gpu (default with a GPU) or smoke (default without)")
    ap.add_argument("--batch-size", type=int, default=8, help="images per prefix pass / prompts per naive pass")
    a = ap.parse_args(argv)

    from probekit.data import get_dataset
    from probekit.models import load_model, resolve_device, resolve_dtype
    from probekit.models.standins import llava15_standin
    from probekit.prompts import paper_a_variants

    device = resolve_device(a.device)
    dtype = resolve_dtype(a.dtype, device)
    scale = a.scale or ("gpu" if device.type == "cuda" else "smoke")
    images, hidden, layers, vhidden, vlayers = SCALES[scale]
    if device.type != "cuda":
        print(f"note: no GPU in use ({device}); scale {scale!r}: the figures check the code, not GPU throughput")
    else:
        print(f"GPU: {torch.cuda.get_device_name(device)}; torch {torch.__version__}")
    data = get_dataset("fashion-mnist", n_per_class=max(1, images // 10 + 1))
    data = dataclasses.replace(data, items=data.items[:images])
    variants = paper_a_variants(data.concept, data.negation)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiny_dir = llava15_standin(tmp / "llava15-standin")
        tiny = load_model(str(tiny_dir), dtype=dtype, device=device)
        run_paths("tiny llava-1.5 stand-in", tiny, data, variants, batch_size=a.batch_size, tmp=tmp)
        del tiny
        lm, n = big_llava(tiny_dir, hidden=hidden, layers=layers, vision_hidden=vhidden, vision_layers=vlayers,
                          device=device, dtype=dtype)
        print(f"\nLLaVA-1.5-shaped random model: {n / 1e9:.2f} B parameters ({vlayers} x {vhidden} vision tower, "
              f"{layers} x {hidden} decoder)")
        run_paths(lm.model_id, lm, data, variants, batch_size=a.batch_size, tmp=tmp)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
