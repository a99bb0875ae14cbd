"""Chapter 06 (paper C, arXiv 2504.21447): visual layer selection — the glue of the chapter.

    from probekit.papers.c_layer_selection import analysis, chapter, charts, claims
    vr = chapter.run("llava-organism", n_per_class=100, cache_dir=".cache/probekit", seed=0)
    results = analysis.probe_tasks(vr)             # accuracy per (task, vision layer) + the fusion, with CIs
    charts.lrs_chart(vr); charts.task_chart(vr, results)
    claims.record_payload(vr, results)             # what the reproduction-status page needs

:func:`run` finds the chapter's stores — one :class:`~probekit.store.ActivationStore` per task under
``cache_dir/vision_layers/<model>/<16 hex digits>/<task>`` — from the parameters and the model's identity read
from its config and weight files (:func:`probekit.models.identify`), **without loading the model**. When every
store is complete it builds the four tasks at the image size the store records (:mod:`.tasks`: the labels, and
the pixels the stores' keys are checked against) and reads the features; only a missing or incomplete store loads
the model, which then runs its vision tower over the images once (:func:`probekit.extract.vision.extract_vision`).
LRS over all task images and the shallow / middle / deep cut come from the stored arrays (:mod:`.analysis`).

This is the *probe* version of paper C's experiment: a linear probe per vision layer stands in for an
MLLM trained with its projector on that layer. The paper's main experiment (one organism per layer choice,
trained with the same recipe) is not run here; see the chapter.
"""

from __future__ import annotations

from pathlib import Path

from ...book.context import cache_path, load
from ...errors import ProbekitError, StoreError
from ...extract.vision import VISION_VERSION, extract_vision, open_complete, vision_key
from ...models import LoadedModel, identify
from ...store import ActivationStore, key_sha256
from .analysis import (
    VisionFeatures,
    VisionRun,
    group_layers,
    overall_similarity,
    representative_layers,
)
from .tasks import TASKS, VisionTask, build_tasks, model_image_size


def store_root(cache_dir, model_id: str, identity: dict, request: dict) -> Path:
    """Where the chapter's stores are: ``cache_dir/vision_layers/<model slug>/<16 hex digits>`` of the model's
    identity and the parameters that decide the images and the pooling (not the image size, which a run without
    the model reads from the stores)."""
    return cache_path(cache_dir, "vision_layers", model_id, {"model": identity, "request": request,
                                                             "version": VISION_VERSION})


def stored_image_sizes(root: Path) -> list[int]:
    """The image sizes the stores under ``root`` were extracted at, the most recently written first."""
    found = []
    for m in sorted(root.glob("*/manifest.json"), key=lambda p: p.stat().st_mtime_ns, reverse=True):
        try:
            size = int(ActivationStore.open(m.parent).extra["image_size"])
        except (StoreError, KeyError, TypeError, ValueError):
            continue
        if size not in found:
            found.append(size)
    return found


def task_store(root: Path, identity: dict, name: str, task: VisionTask, grid: int) -> tuple[Path, dict]:
    """A task's store path and key: ``root/<task>-<16 hex digits of the key>`` (new images, a new store)."""
    key = vision_key(identity, task.pil_images(), grid=grid, data=task.identity())
    return root / f"{name}-{key_sha256(key, 16)}", key


def run(model_id: str, dataset: str = "fashion-mnist", data_root: str | None = None, n_per_class: int = 100,
        device: str = "cpu", dtype: str = "float32", cache_dir=".cache/probekit", seed: int = 0, *,
        tasks=TASKS, grid: int = 2, n_groups: int = 3, fusion_rule: str = "last", image_size: int | None = None,
        max_count: int = 6, count_grid: int = 3, position_grid: int = 3, lm: LoadedModel | None = None,
        batch_size: int = 32, progress=None) -> VisionRun:
    """Find (or, with the model, extract) the tasks' pooled vision features per layer; LRS, groups and fusion."""
    if dataset != "fashion-mnist":
        raise ProbekitError(f"chapter 06 builds its tasks from Fashion-MNIST items (and held-out digits); dataset "
                            f"{dataset!r} is not supported here — use 'fashion-mnist' (data_root: its IDX folder)")
    if n_per_class is None or int(n_per_class) < 2:
        raise ProbekitError("n_per_class must be at least 2 (every class needs a training and a held-out image)")
    tasks = list(tasks)
    identity = lm.identity() if lm is not None else identify(model_id, dtype=dtype, device=device)
    request = {"tasks": tasks, "n_per_class": int(n_per_class), "seed": seed, "max_count": max_count,
               "count_grid": count_grid, "position_grid": position_grid, "data_root": data_root,
               "image_size": image_size, "grid": grid}
    root = store_root(cache_dir, str(model_id), identity, request)

    def build(size):
        return build_tasks(size, int(n_per_class), seed, tasks, max_count=max_count, count_grid=count_grid,
                           position_grid=position_grid, fashion_root=data_root)

    task_set, stores, from_cache = None, {}, False
    for size in [image_size] if image_size else stored_image_sizes(root):  # a re-run: no model
        task_set = build(int(size))
        stores = {t: open_complete(*task_store(root, identity, t, task, grid)) for t, task in task_set.items()}
        from_cache = all(s is not None for s in stores.values())
        if from_cache:
            break
    if not from_cache:  # no complete store for these parameters: only now is the model loaded
        lm = lm or load(model_id, device=device, dtype=dtype)
        identity = lm.identity()  # (= identify()'s; if it were not, a re-run would load the model again, not err)
        root = store_root(cache_dir, str(model_id), identity, request)
        size = int(image_size or model_image_size(lm.processor))
        if task_set is None or any(task.size != size for task in task_set.values()):
            task_set = build(size)
        stores = {t: extract_vision(lm, task.pil_images(), task_store(root, identity, t, task, grid)[0], grid=grid,
                                    labels=task.labels, classes=task.classes, ids=[f"{t}/{i}" for i in range(len(task))],
                                    data=task.identity(), image_size=size, batch_size=batch_size, progress=progress)
                  for t, task in task_set.items()}
    feats = {t: VisionFeatures.from_store(stores[t]) for t in task_set}
    first = stores[tasks[0]]
    facts = {**first.extra, "architecture": first.key["model"]["architecture"]}
    lrs = overall_similarity(feats)
    groups = group_layers(lrs, min(n_groups, lrs.shape[0] - 1))  # a tower with fewer blocks than groups: one each
    return VisionRun(model_id=str(model_id), tasks=task_set, features=feats, lrs=lrs, groups=groups,
                     fusion=representative_layers(groups, fusion_rule), fusion_rule=fusion_rule, seed=seed,
                     n_per_class=int(n_per_class), image_size=int(facts["image_size"]), grid=grid, facts=facts,
                     cache_path=root, from_cache=from_cache, lm=lm)


__all__ = ["run", "store_root", "stored_image_sizes", "task_store"]
