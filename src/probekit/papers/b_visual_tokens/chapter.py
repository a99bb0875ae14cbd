"""Chapter 05 (paper B, arXiv 2510.04819): visual tokens inside the language model — the run.

    from probekit.papers.b_visual_tokens import analysis, charts, claims, chapter
    tr = chapter.run("llava-organism", n_per_class=20, cache_dir=".cache/probekit", seed=0)
    res = analysis.measure(tr)           # per (condition, task, feature, layer): score and 95 % bootstrap CI
    charts.perception_chart(tr, res); charts.variance_chart(tr); charts.conditions_chart(tr, res)   # altair
    claims.record_payload(tr, res)       # what the reproduction-status page needs

:func:`run` takes Fashion-MNIST **test** images at the model's image size (the organisms never trained on
them), derives each image token's foreground mask from the clean black background
(:func:`probekit.papers.b_visual_tokens.readouts.foreground_masks`), and reads everything else from stores
under ``cache_dir/visual_tokens/<model>``:

- one store of the **text side** (:func:`probekit.extract.kv.extract_queries`): the class names' query states,
  and in its manifest the model's image size, depth, key / value width, token grid and the causality check;
- one store per (condition, view) of the **image tokens** (:func:`probekit.extract.kv.extract_image_tokens`):
  keys, values, hidden states and vision-encoder / projector counterparts of three views of every image — as
  is, mirrored left-right, shifted right by whole tokens — under three conditions:

  - ``plain``: the image first in the user turn, the question after it;
  - ``prefix``: a short text before the image (:func:`probekit.prompts.template`'s ``prefix``);
  - ``blocked``: as ``plain``, with attention to the input-agnostic late-layer keys blocked
    (:func:`probekit.extract.kv.blocked_attention`); when the rule finds none, the lowest-variance late-layer
    keys stand in, labelled as such.

Every store is located from the model's identity (:func:`probekit.models.identify`: its config and a hash of
its weight files, nothing built) and the parameters, so **a re-run on complete stores loads no model**. Only
when a store is missing, partial or was written for anything else is the model loaded
(:func:`probekit.book.context.load`, once) and the store extracted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...book import context
from ...data.sets import FASHION_MNIST_CLASSES
from ...errors import ProbekitError
from ...extract.kv import (
    KV_VERSION,
    extract_image_tokens,
    extract_queries,
    find_image_tokens,
    find_queries,
)
from ...models import LoadedModel, identify
from ...store import key_sha256
from ..c_layer_selection.tasks import VisionTask, class_task, model_image_size
from . import readouts as vt
from .analysis import TokensRun, check_param

SECOND_PROMPT = "Is this a fashion item? Answer yes or no."  # the causality check's other question
N_CAUSALITY = 8  # images of the causality check


def class_phrase(name: str) -> str:
    """A class name with its indefinite article ('a sneaker', 'an ankle boot')."""
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def store_path(cache_dir, identity: dict, task: VisionTask, view: str, condition: str, spec: dict) -> Path:
    """``cache_dir/visual_tokens/<model slug>/<condition>-<view>-<hash of what changes the numbers>``."""
    key = {"model": identity, "task": task.identity(), "view": view, "spec": spec, "version": KV_VERSION}
    h = key_sha256(key, 16)
    return Path(cache_dir) / "visual_tokens" / context.slug(identity["model_id"]) / f"{condition}-{view}-{h}"


def queries_path(cache_dir, identity: dict, texts: list[str], data: dict, prompt: str) -> Path:
    """``cache_dir/visual_tokens/<model slug>/queries-<hash>``: the text side's store. Its key holds what can be
    known before the images are made (they need the image size it records): the model's identity, the query
    texts, the data parameters and the prompts of the causality check."""
    key = {"model": identity, "texts": texts, "data": data, "prompts": [prompt, SECOND_PROMPT],
           "n_check": N_CAUSALITY, "version": KV_VERSION}
    return Path(cache_dir) / "visual_tokens" / context.slug(identity["model_id"]) / f"queries-{key_sha256(key, 16)}"


def _check_params(dataset, n_per_class, shift, ink, min_fraction, agnostic_threshold, late_from, block_fallback,
                  prefix, query_template) -> None:
    if dataset != "fashion-mnist":
        raise ProbekitError(f"chapter 05 derives its ground truth from Fashion-MNIST's clean black background; dataset "
                            f"{dataset!r} is not supported here — use 'fashion-mnist' (data_root: its IDX folder)")
    check_param("n_per_class", n_per_class, lambda v: isinstance(v, int) and v >= 2,
                "an integer of at least 2 (every class needs a training and a held-out image)")
    check_param("shift", shift, lambda v: isinstance(v, int) and v >= 1, "a positive number of whole tokens")
    check_param("ink", ink, lambda v: isinstance(v, int) and 0 <= v < 255, "an integer pixel value in 0..254")
    check_param("min_fraction", min_fraction, lambda v: isinstance(v, (int, float)) and 0 < v <= 1,
                "a fraction in (0, 1]")
    check_param("agnostic_threshold", agnostic_threshold, lambda v: isinstance(v, (int, float)) and v > 0,
                "a positive variance ratio")
    check_param("late_from", late_from, lambda v: isinstance(v, (int, float)) and 0 <= v < 1,
                "a fraction of depth in [0, 1)")
    check_param("block_fallback", block_fallback, lambda v: isinstance(v, int) and v >= 0, "a non-negative integer")
    check_param("prefix", prefix, lambda v: v is None or (isinstance(v, str) and v.strip()), "a non-empty text or None")
    if "{phrase}" not in query_template and "{name}" not in query_template:
        raise ProbekitError(f"query_template {query_template!r} must contain {{phrase}} ('a sneaker') or {{name}} "
                            "('sneaker'): the query is the class name's last token")


def run(model_id: str, dataset: str = "fashion-mnist", data_root: str | None = None, n_per_class: int = 20,
        device: str = "cpu", dtype: str = "float32", cache_dir=".cache/probekit", seed: int = 0, *,
        prompt: str = "What is in this image?", prefix: str | None = "Look closely at this image.", shift: int = 1,
        ink: int = vt.INK, min_fraction: float = vt.MIN_FRACTION, agnostic_threshold: float = 0.1,
        late_from: float = 0.5, block_fallback: int = 1, layers=None, query_template: str = "{phrase}",
        lm: LoadedModel | None = None, batch_size: int = 32) -> TokensRun:
    """Take the images, find (or extract) the text side and every (condition, view) store, find the
    input-agnostic keys. The model (``lm``, or loaded from ``model_id``) runs only for a store that is missing."""
    _check_params(dataset, n_per_class, shift, ink, min_fraction, agnostic_threshold, late_from, block_fallback,
                  prefix, query_template)
    held = {"lm": lm}

    def model() -> LoadedModel:
        if held["lm"] is None:
            held["lm"] = context.load(model_id, device=device, dtype=dtype)
        return held["lm"]

    identity = lm.identity() if lm is not None else identify(model_id, dtype=dtype, device=device)
    texts = [query_template.format(phrase=class_phrase(c), name=c) for c in FASHION_MNIST_CLASSES]
    qpath = queries_path(cache_dir, identity, texts, {"dataset": dataset, "data_root": data_root,
                                                      "n_per_class": n_per_class, "seed": seed}, prompt)
    found = find_queries(qpath, identity, texts, prompt=prompt, check_prompt=SECOND_PROMPT)
    size = int(found.extra["image_size"][0]) if found is not None else int(model_image_size(model().processor))
    task = class_task(size, n_per_class, seed, fashion_root=data_root)
    check = task.images[:min(N_CAUSALITY, len(task))]
    qs = None if found is None else find_queries(qpath, identity, texts, images=check, prompt=prompt,
                                                 check_prompt=SECOND_PROMPT)
    was_complete = [qs is not None]
    if qs is None:
        qs = extract_queries(model(), texts, qpath, images=check, prompt=prompt, check_prompt=SECOND_PROMPT)
    facts = qs.extra
    L = int(facts["num_layers"])
    layers = list(range(1, L + 1)) if layers is None else [int(x) for x in layers]
    grid, cells = (int(facts["grid"][0]), int(facts["grid"][1])), np.asarray(facts["cells"])
    if not 1 <= shift < grid[1]:
        raise ProbekitError(f"parameter shift={shift} must be between 1 and {grid[1] - 1}: the model's token grid has "
                            f"{grid[1]} columns")
    views = {"original": task.images, "flip": vt.flip_images(task.images),
             "shift": vt.shift_images(task.images, vt.shift_pixels(size, grid[1], shift))}
    masks = vt.foreground_masks(task.images, grid, ink=ink, min_fraction=min_fraction)
    stores = {}

    def extract(condition, spec):
        for view, imgs in views.items():
            path = store_path(cache_dir, identity, task, view, condition, {**spec, "prompt": prompt, "layers": layers})
            st = find_image_tokens(path, identity, imgs, prompt=prompt, prefix=spec["prefix"], block=spec["block"],
                                   layers=layers)
            was_complete.append(st is not None)
            stores[(condition, view)] = st or extract_image_tokens(
                model(), imgs, path, prompt=prompt, prefix=spec["prefix"], block=spec["block"], layers=layers,
                labels=task.labels, classes=task.classes, batch_size=batch_size)

    conditions = {"plain": {"prefix": None, "block": None}}
    if prefix:
        conditions["prefix"] = {"prefix": prefix, "block": None}
    for c in list(conditions):
        extract(c, conditions[c])
    keys = stores[("plain", "original")].array("keys")
    variance = vt.key_variance(keys)
    input_variance = vt.key_variance(stores[("plain", "original")].array("hidden", 0)[:, None])[0]
    agnostic = vt.input_agnostic(variance, layers, n_layers=L, threshold=agnostic_threshold, late_from=late_from)
    block, source = agnostic, "rule" if agnostic else None
    if not agnostic and block_fallback:
        late = vt.late_layers(layers, L, late_from)
        block = {l: np.argsort(variance[layers.index(l)], kind="stable")[:block_fallback].tolist()
                 for l in late}
        source = "stand-in" if block else None
    if block:
        conditions["blocked"] = {"prefix": None, "block": {int(k): [int(i) for i in v] for k, v in block.items()}}
        extract("blocked", conditions["blocked"])
    return TokensRun(
        model_id=str(model_id), identity=identity, facts=facts, task=task, views=views, masks=masks, grid=grid,
        cells=cells, layers=layers, stores=stores, query_store=qs, conditions=conditions, variance=variance,
        input_variance=input_variance, agnostic=agnostic, block=block or {}, block_source=source,
        queries={k: qs.array(k) for k in ("keys", "values", "hidden")}, query_texts=texts, prompt=prompt,
        prefix=prefix, shift=shift, ink=ink, min_fraction=float(min_fraction), threshold=float(agnostic_threshold),
        late_from=float(late_from), seed=seed, n_per_class=int(n_per_class), image_size=size,
        causality=facts["causality"], lm=held["lm"], from_cache=all(was_complete),
        cache_root=Path(cache_dir) / "visual_tokens" / context.slug(identity["model_id"]))


__all__ = ["N_CAUSALITY", "SECOND_PROMPT", "class_phrase", "queries_path", "run", "store_path"]
