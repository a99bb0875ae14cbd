"""One evaluator for every organism: its answers read exactly as the book reads them, on held-out images.

Answer accuracy per prompt is the share of images whose preferred answer is the correct one, with the readout of
:mod:`probekit.extract` (each answer's best token sequence, teacher-forced after the prompt: the store's
``correct``); naming is the class name written by greedy decoding. Images come from a held-out split of
:func:`probekit.organisms.tasks.image_pools`: **dev** for training decisions, **test** for what cards and the
book report. Each domain is asked with its own concept, so the negation names the other domain.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..extract import answer_plan, forward_shared, shared_prefix
from ..models import LoadedModel, wrap
from ..prompts import Variant, dev_wordings, probe_prompts, template, unseen_paraphrases
from .tasks import CLASS_NAMES, CONCEPTS, NAMING_PROBE, bank_wordings, image_pools

KEYS = {"fashion": "fashion-mnist", "digits": "digits"}


def answer_accuracy(lm: LoadedModel, images, variants: list[Variant], *, batch: int = 32) -> dict[str, float]:
    """Share of ``images`` on which the model prefers each variant's expected answer."""
    prompts = {v.name: template(lm, v.text) for v in variants}
    plans = answer_plan(lm, prompts, variants)
    plan = shared_prefix(lm, prompts, images[0])
    right = {v.name: 0 for v in variants}
    for s in range(0, len(images), batch):
        lp = forward_shared(lm, images[s:s + batch], plan, answers=plans)["logprob"]  # [b, V, 2]
        for j, v in enumerate(variants):
            e = plans[v.name].expected
            right[v.name] += int((lp[:, j, e] > lp[:, j, 1 - e]).sum())
    return {k: round(c / len(images), 4) for k, c in right.items()}


def naming_accuracy(lm: LoadedModel, images, names: list[str], *, batch: int = 64) -> tuple[float, list[str]]:
    """Share of ``images`` whose greedy answer to the naming question is the class name (case and spaces
    ignored), and the first few answers."""
    from .recipe import Chat, encode

    chat = Chat(lm.processor)
    said_all, right = [], 0
    for s in range(0, len(images), batch):
        enc = {k: v.to(lm.device) for k, v in encode(chat, images[s:s + batch], [NAMING_PROBE] * len(images[s:s + batch])).items()}
        with torch.inference_mode():
            gen = lm.model.generate(**enc, max_new_tokens=8, do_sample=False, eos_token_id=chat.end_id,
                                    pad_token_id=chat.tokenizer.pad_token_id)
        for row, name in zip(gen[:, enc["input_ids"].shape[1]:].tolist(), names[s:s + batch]):
            if chat.end_id in row:
                row = row[:row.index(chat.end_id)]
            said = chat.tokenizer.decode(row, skip_special_tokens=True).strip()
            said_all.append(said)
            right += "".join(said.lower().split()) == "".join(name.lower().split())
    return round(right / len(images), 4), said_all[:5]


def evaluate(model, processor, *, split: str = "test", per_class: int | None = 100, seed: int = 0, log=print,
             domains: tuple[str, ...] = ("fashion", "digits"), naming: bool = True, paraphrases: bool = True,
             dev_only: bool = False, bank: bool = False, batch: int = 32) -> dict:
    """Held-out behaviour of an organism on ``split`` ('dev' or 'test'), per domain: answer accuracy on every
    probe prompt (:func:`probekit.prompts.probe_prompts`), on the paraphrases no organism trained on, and
    naming. ``per_class`` images per class (seeded; ``None``: all of the split). ``dev_only`` adds the
    wordings for training decisions (:func:`probekit.prompts.dev_wordings`; only on the dev split); ``bank``
    adds four of the training bank's own wordings (:func:`probekit.organisms.tasks.bank_wordings`)."""
    if dev_only and split != "dev":
        raise ValueError(f"the dev-only wordings are for training decisions: score them on split='dev', not {split!r}")
    was = model.training
    model.eval()
    lm = wrap(model, processor, "organism under evaluation")
    pools = image_pools(split)
    out = {}
    try:
        for domain in domains:
            other = "digits" if domain == "fashion" else "fashion"
            pool = pools[domain]
            idx = np.arange(len(pool))
            if per_class:
                rng = np.random.default_rng(seed)
                idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(pool.labels == c), min(per_class, int((pool.labels == c).sum())),
                                                         replace=False) for c in range(10)]))
            images = [Image.fromarray(pool.images[i]).convert("RGB") for i in idx]
            res = {"split": split, "n": int(len(idx)), "concept_text": CONCEPTS[domain], "negation_text": CONCEPTS[other]}
            res.update(answer_accuracy(lm, images, probe_prompts(CONCEPTS[domain], CONCEPTS[other]), batch=batch))
            if paraphrases:
                para = [v for v in unseen_paraphrases(CONCEPTS[domain], CONCEPTS[other]) if v.family == "paraphrase"]
                res["paraphrases"] = answer_accuracy(lm, images, para, batch=batch)
            for part, on, wordings in (("bank_wordings", bank, bank_wordings), ("dev_wordings", dev_only, dev_wordings)):
                if on:
                    res[part] = answer_accuracy(lm, images, wordings(CONCEPTS[domain], CONCEPTS[other]), batch=batch)
            if naming:
                names = [CLASS_NAMES[domain][pool.labels[i]] for i in idx]
                res["naming"], res["naming_examples"] = naming_accuracy(lm, images, names)
            key = f"{KEYS[domain]}/{split}"
            log(f"[eval] {key}: " + ", ".join(f"{k} {v}" for k, v in res.items() if isinstance(v, float))
                + "".join(f"; {part.replace('_', ' ')} " + ", ".join(f"{k} {v}" for k, v in res[part].items())
                          for part in ("paraphrases", "bank_wordings", "dev_wordings") if part in res))
            out[key] = res
    finally:
        model.train(was)
    return out
