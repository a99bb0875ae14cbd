"""smol-llava's projector training and :func:`finalize` (build, checks, fingerprint, card)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..card import sha256_file as _sha256
from .assembly import assemble, build_smol_llava, load_projector, projector_state_dict
from .card import write_card
from .checks import conversion_checks, fingerprint
from .constants import NAME, PROJECTOR_FILE, SHIPPED

# -------------------------------------------------------------------------------------------- training

def training_example(rng: np.random.Generator, domain: str, label: int, naming_fraction: float) -> tuple[str, str]:
    """(question, answer) for an image of ``domain``: paper A's anchor and variants, asked with either
    domain's concept (the variant set of the image's own domain keeps its expected answers; the other
    domain's set flips them, so every phrasing has both answers), or naming -> the class name."""
    from ..tasks import CLASS_NAMES, CONCEPTS, NAMING_QUESTIONS

    if rng.random() < naming_fraction:
        return NAMING_QUESTIONS[rng.integers(len(NAMING_QUESTIONS))], CLASS_NAMES[domain][label]
    other = "digits" if domain == "fashion" else "fashion"
    own = rng.random() < 0.5
    concept, negation = (CONCEPTS[domain], CONCEPTS[other]) if own else (CONCEPTS[other], CONCEPTS[domain])
    variants = _variants(concept, negation)
    v = variants[rng.integers(len(variants))]
    if own:
        return v.text, v.expected
    return v.text, v.answers[1] if v.expected == v.answers[0] else v.answers[0]


_VARIANT_CACHE: dict = {}


def _variants(concept, negation):
    from ...prompts import paper_a_variants

    key = (concept, negation)
    if key not in _VARIANT_CACHE:
        _VARIANT_CACHE[key] = paper_a_variants(concept, negation)
    return _VARIANT_CACHE[key]


def _answer_loss(model, inputs: dict):
    """Cross-entropy on the answer tokens only; the LM head runs on those positions alone."""
    import torch

    labels = inputs.pop("labels")
    out = model.model(**inputs)
    h = out.last_hidden_state[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    logits = model.lm_head(h[keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


def train_smol_llava(out_dir=None, *, seed: int = 0, steps: int = 300, batch: int = 16, lr: float = 1e-3,
                     naming_fraction: float = 0.2, digits_fraction: float = 0.3, paired: bool = True,
                     variant_weights: dict[str, float] | None = None,
                     eval_per_class: int = 20, digits_per_class: int | None = 10,
                     threads: int | None = None, write_shipped: bool = True, init_projector=None,
                     previous_segments: list[dict] | None = None, log=print) -> dict:
    """LLaVA stage 1 on this organism: the projector alone is trained (DINOv2 and SmolLM2 frozen) on
    Fashion-MNIST train images + the train 2/3 of scikit-learn's digits, with paper A's anchor and
    variant questions and naming. With ``paired`` (the default) a batch is made of pairs that share one
    question and differ in the answer: a paper-A variant asked of one Fashion-MNIST and one digit image
    (so the text alone cannot give the answer), or naming asked of two images of different classes of one
    domain (``digits_fraction`` of naming pairs are digits); otherwise examples are drawn one by one.
    ``variant_weights`` (paired batches only) draws the paper-A variants with these relative weights instead of
    uniformly (e.g. ``{"one_zero": 4}`` to spend more of a segment on the output-format variant).
    Then the held-out behaviour is measured and, with ``write_shipped``,
    the projector + model card are written to ``shipped/smol-llava/`` and the full model is built into
    ``out_dir`` (default: the cache) from them. ``init_projector`` (a projector safetensors file) continues
    training from it instead of a fresh seeded projector; ``previous_segments`` (the reports of the runs
    that made it) are kept in the report and the card. Returns the report."""
    import torch
    from safetensors.torch import save_file

    from .. import recipe as recipe_mod
    from ..recipe import Chat, encode
    from ..tasks import CONCEPTS, image_pools

    if threads:
        torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    load_start = os.getloadavg()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    init = load_projector(Path(init_projector)) if init_projector is not None else None
    model, processor = assemble(init, seed=seed, log=log)
    setup = time.perf_counter() - t0
    chat = Chat(processor)
    pools = image_pools("train", seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.model.multi_modal_projector.parameters())
    for p in params:
        p.requires_grad_(True)
    model.train()

    def pil(domain, i):
        from PIL import Image

        return Image.fromarray(pools[domain].images[i]).convert("RGB")

    def draw(domain, label=None):
        pool = pools[domain]
        if label is None:
            return int(rng.integers(len(pool)))
        return int(rng.choice(np.flatnonzero(pool.labels != label)))

    def loss_fn(_):
        pils, qs, ans = [], [], []
        while len(pils) < batch:
            if not paired:
                domain = "digits" if rng.random() < digits_fraction else "fashion"
                i = draw(domain)
                q, a = training_example(rng, domain, int(pools[domain].labels[i]), naming_fraction)
                pils.append(pil(domain, i)), qs.append(q), ans.append(a)
                continue
            # a pair: one question, two images whose answers differ, so only the image can tell them apart
            if rng.random() < naming_fraction:
                domain = "digits" if rng.random() < digits_fraction else "fashion"
                i = draw(domain)
                j = draw(domain, int(pools[domain].labels[i]))
                q, a = training_example(rng, domain, int(pools[domain].labels[i]), 1.0)
                _, b = training_example(rng, domain, int(pools[domain].labels[j]), 1.0)
                pair = ((domain, i, a), (domain, j, b))
            else:  # a paper-A variant about one domain's concept, asked of a fashion and a digit image
                own = "fashion" if rng.random() < 0.5 else "digits"
                other = "digits" if own == "fashion" else "fashion"
                v = _variants(CONCEPTS[own], CONCEPTS[other])
                if variant_weights:
                    w = np.array([float(variant_weights.get(x.name, 1.0)) for x in v])
                    v = v[rng.choice(len(v), p=w / w.sum())]
                else:  # uniform (the draw of the first segments; keeps them reproducible)
                    v = v[rng.integers(len(v))]
                flipped = v.answers[1] if v.expected == v.answers[0] else v.answers[0]
                q = v.text
                pair = ((own, draw(own), v.expected), (other, draw(other), flipped))
            for domain, k, answer in pair:
                pils.append(pil(domain, k)), qs.append(q), ans.append(answer)
        return _answer_loss(model, encode(chat, pils[:batch], qs[:batch], ans[:batch]))

    stats = recipe_mod.optimize("projector", params, steps, lr, loss_fn, log, every=10)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    train_seconds = time.perf_counter() - t0
    report = {
        "seed": seed, "steps": steps, "batch": batch, "lr": lr, "naming_fraction": naming_fraction,
        "digits_fraction": digits_fraction, "paired": paired, "variant_weights": variant_weights, "setup_seconds": round(setup, 1),
        "load_average_1min": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2),
                              "cores": os.cpu_count()},
        "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(time.process_time() - c0, 1),
        "torch_threads": torch.get_num_threads(), "loss": stats,
        "train_images": {"fashion": len(pools["fashion"]), "digits": len(pools["digits"])},
        "init_projector": None if init_projector is None else {"path": str(init_projector),
                                                               "sha256": _sha256(Path(init_projector))},
        "previous_segments": list(previous_segments or []),
    }
    log(f"[train] {train_seconds:.0f} s; evaluating on held-out images")
    t = time.perf_counter()
    report["held_out"] = evaluate_smol_llava(model, processor, eval_per_class=eval_per_class,
                                             digits_per_class=digits_per_class, log=log)
    report["eval_seconds"] = round(time.perf_counter() - t, 1)
    state = projector_state_dict(model)
    if write_shipped:
        SHIPPED.mkdir(parents=True, exist_ok=True)
        save_file(state, str(PROJECTOR_FILE), metadata={"organism": NAME, "seed": str(seed), "steps": str(steps)})
        (SHIPPED / "training.json").write_text(json.dumps(report, indent=1) + "\n")
        del model
        try:  # build from the shipped projector, check the conversions on the build, write card + fingerprint
            report["conversion_checks"] = finalize(out_dir, log=log)
        except Exception as e:  # the projector and report are written; `finalize()` can be re-run on them
            log(f"[{NAME}] build/card failed after training: {type(e).__name__}: {e}; re-run finalize()")
    return report


def evaluate_smol_llava(model, processor, *, eval_per_class: int = 30, digits_per_class: int | None = 20,
                        seed: int = 0, log=print) -> dict:
    """Held-out behaviour with the organisms' one evaluator (:func:`probekit.organisms.evaluate.evaluate`: the
    book's readout, every probe prompt, the unseen paraphrases, naming) on the test half."""
    from ..evaluate import evaluate

    return evaluate(model, processor, split="test", per_class=eval_per_class, seed=seed, log=log)


def finalize(out_dir=None, *, log=print) -> dict:
    """After training: build from the shipped projector, run the conversion checks on the build, write
    ``fingerprint.json`` and the card. Returns the checks."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    t = time.perf_counter()
    path = build_smol_llava(out_dir, log=log, force=True)
    build_seconds = time.perf_counter() - t
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    checks = conversion_checks(model)
    (SHIPPED / "fingerprint.json").write_text(json.dumps(fingerprint(model, processor), indent=1) + "\n")
    report = json.loads((SHIPPED / "training.json").read_text())
    report["conversion_checks"] = checks
    report["build_seconds"] = round(build_seconds, 1)
    (SHIPPED / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    write_card(report, checks, build_seconds)
    shutil.copy(SHIPPED / "README.md", path / "README.md")
    return checks
