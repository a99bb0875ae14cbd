"""Chapter 06 (paper C, arXiv 2504.21447): visual layer selection, as library calls.

    from probekit import vision_chapter as vc
    vr = vc.run("llava-organism", n_per_class=100, cache_dir=".cache/probekit", seed=0)
    results = vc.probe_tasks(vr)                 # accuracy per (task, vision layer) + the fusion, with CIs
    vc.lrs_chart(vr); vc.task_chart(vr, results) # altair
    vc.record_payload(vr, results)               # what the reproduction-status page needs

:func:`run` loads the model, builds the four tasks at the model's image size (:mod:`probekit.papers.c_layer_selection.tasks`),
runs the vision tower once over every image (:func:`probekit.papers.c_layer_selection.analysis.extract_vision_features`;
cached under ``cache_dir/vision_layers``: a second run with the same model, tasks and seed re-uses the
features), computes LRS over all task images and cuts layers 1..V into shallow / middle / deep.

This is the *probe* version of paper C's experiment: a linear probe per vision layer stands in for an
MLLM trained with its projector on that layer. The paper's main experiment (one organism per layer choice,
trained with the same recipe) is not run here; see the chapter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...book.context import ChapterRun, load, slug
from ...errors import ProbekitError
from ...models import LoadedModel
from ...stats import paired_difference
from ...store import key_sha256
from .analysis import (
    VisionFeatures,
    extract_vision_features,
    group_layers,
    group_names,
    layer_group,
    probe_layers,
    representative_layers,
)
from .tasks import TASK_TITLES, TASKS, VisionTask, build_tasks, model_image_size

FEATURE_VERSION = 1  # bump when the features' definition changes (part of the cache key)
GROUP_COLORS = {"embeddings": "#bbbbbb", "shallow": "#4c78a8", "middle": "#54a24b", "deep": "#b279a2"}
RECORD_NAME = "visual_layers"


@dataclass
class VisionRun(ChapterRun):
    """One model's vision tower on the four tasks: features, LRS, groups, fusion layers."""

    model_id: str
    lm: LoadedModel
    tasks: dict[str, VisionTask]
    features: dict[str, VisionFeatures]
    lrs: np.ndarray
    groups: list[range]
    fusion: list[int]
    fusion_rule: str
    seed: int
    n_per_class: int
    image_size: int
    grid: int
    cache_path: Path | None = None
    from_cache: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        """V: the vision tower's blocks (features hold V+1 states, 0 = patch embeddings)."""
        return int(self.lrs.shape[0] - 1)

    @property
    def n_images(self) -> int:
        return sum(len(t) for t in self.tasks.values())

    @property
    def default_layer(self) -> int:
        return default_vision_layer(self.lm, self.n_layers)

    @property
    def data_label(self) -> str:
        return (f"4 tasks from Fashion-MNIST test + held-out digits at {self.image_size} px "
                f"({self.n_per_class} per class)")

    def group_table(self) -> pd.DataFrame:
        names = group_names(len(self.groups))
        S = self.lrs
        rows = []
        for name, g, rep in zip(names, self.groups, self.fusion):
            idx = list(g)
            inside = S[np.ix_(idx, idx)]
            within = float((inside.sum() - np.trace(inside)) / max(len(idx) * (len(idx) - 1), 1)) if len(idx) > 1 \
                else float("nan")
            rest = [i for i in range(1, S.shape[0]) if i not in g]
            between = float(S[np.ix_(idx, rest)].mean()) if rest else float("nan")
            rows.append({"group": name, "first layer": g[0], "last layer": g[-1], "layers": len(g),
                         "depth": f"{g[0] / self.n_layers:.2f}–{g[-1] / self.n_layers:.2f}",
                         "fusion layer": rep, "mean LRS within": round(within, 3),
                         "mean LRS to other groups": round(between, 3)})
        return pd.DataFrame(rows)


def default_vision_layer(lm: LoadedModel, n_layers: int) -> int:
    """The vision layer the model's projector reads: LLaVA's ``vision_feature_layer`` (default -2, the
    penultimate; paper C's baseline), otherwise (Qwen2-VL: the merger after the last block) the last."""
    v = getattr(lm.model.config, "vision_feature_layer", None)
    if isinstance(v, (list, tuple)):
        v = v[-1]
    if v is None:
        return n_layers
    v = int(v)
    return v if v >= 0 else n_layers + 1 + v


def cache_key(lm: LoadedModel, tasks: dict[str, VisionTask], grid: int) -> str:
    key = {"model": lm.identity(), "tasks": {k: t.identity() for k, t in tasks.items()}, "grid": grid,
           "version": FEATURE_VERSION}
    return key_sha256(key, 16)


def run(model_id: str, dataset: str = "fashion-mnist", data_root: str | None = None, n_per_class: int = 100,
        device: str = "cpu", dtype: str = "float32", cache_dir=".cache/probekit", seed: int = 0, *,
        tasks=TASKS, grid: int = 2, n_groups: int = 3, fusion_rule: str = "last", image_size: int | None = None,
        max_count: int = 6, count_grid: int = 3, position_grid: int = 3, lm: LoadedModel | None = None,
        batch_size: int = 32, progress=None) -> VisionRun:
    """Load, build the tasks, extract the pooled vision features per layer (cached), LRS and groups."""
    if dataset != "fashion-mnist":
        raise ProbekitError(f"chapter 06 builds its tasks from Fashion-MNIST items (and held-out digits); dataset "
                            f"{dataset!r} is not supported here — use 'fashion-mnist' (data_root: its IDX folder)")
    if n_per_class is None or int(n_per_class) < 2:
        raise ProbekitError("n_per_class must be at least 2 (every class needs a training and a held-out image)")
    lm = lm or load(model_id, device=device, dtype=dtype)
    size = int(image_size or model_image_size(lm.processor))
    task_set = build_tasks(size, int(n_per_class), seed, list(tasks), max_count=max_count, count_grid=count_grid,
                           position_grid=position_grid, fashion_root=data_root)
    path = Path(cache_dir) / "vision_layers" / slug(str(model_id)) / f"{cache_key(lm, task_set, grid)}.npz"
    feats, from_cache = None, False
    if path.is_file():
        try:
            z = np.load(path)
            feats = {t: VisionFeatures(z[f"{t}/mean"], z[f"{t}/grid"], z[f"{t}/lrs"], grid) for t in task_set}
            from_cache = True
        except (KeyError, ValueError, OSError):
            feats = None  # a damaged cache file is recomputed
    if feats is None:
        feats = {t: extract_vision_features(lm, task.pil_images(), grid=grid, batch_size=batch_size,
                                            progress=progress) for t, task in task_set.items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, **{f"{t}/{k}": getattr(f, k) for t, f in feats.items() for k in ("mean", "grid", "lrs")})
        tmp.replace(path)
    n = {t: len(task_set[t]) for t in task_set}
    lrs = sum(feats[t].lrs * n[t] for t in task_set) / sum(n.values())
    groups = group_layers(lrs, min(n_groups, lrs.shape[0] - 1))  # a tower with fewer blocks than groups: one each
    return VisionRun(model_id=str(model_id), lm=lm, tasks=task_set, features=feats, lrs=lrs, groups=groups,
                     fusion=representative_layers(groups, fusion_rule), fusion_rule=fusion_rule, seed=seed,
                     n_per_class=int(n_per_class), image_size=size, grid=grid, cache_path=path, from_cache=from_cache)


def groups_per_task(vr: VisionRun) -> pd.DataFrame:
    """The groups cut from each task's own LRS (a stability check of the grouping against the images used)."""
    rows = []
    for t, f in vr.features.items():
        g = group_layers(f.lrs, len(vr.groups))
        rows.append({"LRS over": TASK_TITLES[t], **{n: f"{r[0]}–{r[-1]}" if len(r) > 1 else f"{r[0]}"
                                                  for n, r in zip(group_names(len(g)), g)}})
    rows.append({"LRS over": "all tasks (used)", **{n: f"{r[0]}–{r[-1]}" if len(r) > 1 else f"{r[0]}"
                                                  for n, r in zip(group_names(len(vr.groups)), vr.groups)}})
    return pd.DataFrame(rows)


def probe_tasks(vr: VisionRun, *, feature_set: str = "mean+grid", test_size: float = 0.3, C: float = 1.0,
                n_boot: int = 1000) -> pd.DataFrame:
    """Accuracy per (task, vision layer) and of the fusion probe, each task on its own stratified split."""
    out = []
    for t, task in vr.tasks.items():
        X = vr.features[t].features(feature_set)
        df = probe_layers(X, task.labels, fusion=vr.fusion, test_size=test_size, seed=vr.seed, C=C, n_boot=n_boot,
                          task=t)
        out.append(df)
    correct = {t: df.attrs.pop("correct") for t, df in zip(vr.tasks, out)}  # (pandas compares attrs on concat)
    res = pd.concat(out, ignore_index=True)
    res.attrs = {"correct": correct, "n_boot": n_boot}
    res["task_title"] = res.task.map(TASK_TITLES)
    res["group"] = [("fusion" if k == "fusion" else layer_group(int(layer), vr.groups))
                    for k, layer in zip(res.kind, res.layer)]
    res["feature_set"] = feature_set
    return res


def feature_set_table(vr: VisionRun, results: pd.DataFrame | None = None, *, others=("mean",),
                      n_boot: int = 200) -> pd.DataFrame:
    """Best single-layer accuracy per task with other poolings (default: the mean only) beside the one of
    ``results`` (re-used, not refitted): what the spatial grid adds."""
    runs = {}
    if results is not None:
        runs[str(results.feature_set.iloc[0])] = results
    for fs in others:
        if fs not in runs:
            runs[fs] = probe_tasks(vr, feature_set=fs, n_boot=n_boot)
    rows = []
    for fs, r in runs.items():
        for t, g in r[r.kind == "layer"].groupby("task", sort=False):
            b = g.loc[g.accuracy.idxmax()]
            rows.append({"task": TASK_TITLES[t], "features": fs, "value": f"{b.accuracy:.3f} (layer {int(b.layer)})"})
    order = [fs for fs in VisionFeatures.FEATURE_SETS if fs in runs]
    return (pd.DataFrame(rows).pivot(index="task", columns="features", values="value")[order]
            .reindex([TASK_TITLES[t] for t in vr.tasks]))


def summary_table(vr: VisionRun, results: pd.DataFrame) -> pd.DataFrame:
    """Per task: the best layer of each group, the model's default layer, the fusion, chance."""
    rows = []
    for t, g in results.groupby("task", sort=False):
        layers = g[g.kind == "layer"].set_index("layer")
        row = {"task": TASK_TITLES[t], "chance": round(float(g.chance.iloc[0]), 3)}
        for name in ["embeddings", *group_names(len(vr.groups))]:
            sub = layers[layers.group == name]
            if len(sub):
                b = sub.accuracy.idxmax()
                row[f"best {name}"] = f"{sub.accuracy[b]:.3f} (layer {b})"
        d = vr.default_layer
        row[f"default layer {d}"] = f"{layers.accuracy[d]:.3f}"
        f = g[g.kind == "fusion"].iloc[0]
        row[f"fusion {f.layers}"] = f"{f.accuracy:.3f} [{f.ci_low:.3f}, {f.ci_high:.3f}]"
        best = layers.accuracy.idxmax()
        row["best single layer"] = f"{layers.accuracy[best]:.3f} [{layers.ci_low[best]:.3f}, {layers.ci_high[best]:.3f}]" \
            f" (layer {best})"
        rows.append(row)
    return pd.DataFrame(rows)


# ---- claims ---------------------------------------------------------------------------------------------


def _best(layers: pd.DataFrame, group: str | list[str]):
    groups = [group] if isinstance(group, str) else group
    sub = layers[layers.group.isin(groups)]
    if not len(sub):
        return None
    b = sub.loc[sub.accuracy.idxmax()]
    return {"layer": int(b.layer), "accuracy": float(b.accuracy), "ci": [float(b.ci_low), float(b.ci_high)]}


def _paired(results: pd.DataFrame, task: str, g: pd.DataFrame, a: dict | None, b: dict | None,
            seed: int) -> dict | None:
    """Paired bootstrap of accuracy(a) - accuracy(b) on the task's held-out images (a, b: layer dicts or the
    fusion, which is the row after the last layer)."""
    correct = results.attrs.get("correct", {}).get(task)
    if correct is None or not a or not b:
        return None
    n_layers = int((g.kind == "layer").sum())
    col = lambda x: n_layers if "layers" in x else x["layer"]  # noqa: E731
    d, lo, hi = paired_difference(correct, col(a), col(b), n_boot=int(results.attrs.get("n_boot", 1000)), seed=seed)
    return {"diff": d, "ci": [lo, hi]}


def task_findings(vr: VisionRun, results: pd.DataFrame) -> dict:
    """Per task the numbers the claims are judged on (best layer per group, default layer, fusion), and paired
    bootstrap differences on the same held-out images: shallow/middle minus deep, fusion minus best single."""
    out = {}
    for t, g in results.groupby("task", sort=False):
        layers = g[g.kind == "layer"]
        f = g[g.kind == "fusion"].iloc[0]
        d = layers[layers.layer == vr.default_layer].iloc[0]
        best = layers.loc[layers.accuracy.idxmax()]
        out[t] = {
            "chance": float(g.chance.iloc[0]), "n_test": int(g.n_test.iloc[0]),
            "best": {"layer": int(best.layer), "group": best.group, "accuracy": float(best.accuracy),
                     "ci": [float(best.ci_low), float(best.ci_high)]},
            "shallow": _best(layers, "shallow"), "middle": _best(layers, "middle"), "deep": _best(layers, "deep"),
            "shallow_or_middle": _best(layers, ["shallow", "middle"]),
            "default": {"layer": int(d.layer), "accuracy": float(d.accuracy), "ci": [float(d.ci_low), float(d.ci_high)]},
            "fusion": {"layers": [int(x) for x in vr.fusion], "accuracy": float(f.accuracy),
                       "ci": [float(f.ci_low), float(f.ci_high)]},
        }
        x = out[t]
        x["shallow_middle_minus_deep"] = _paired(results, t, g, x["shallow_or_middle"], x["deep"], vr.seed)
        x["fusion_minus_best"] = _paired(results, t, g, x["fusion"], x["best"], vr.seed)
    return out


def _cmp(a: dict | None, b: dict | None) -> str:
    """How ``a`` compares with ``b``: higher / lower when their 95 % CIs do not overlap, else not separable."""
    if not a or not b:
        return "n/a"
    if a["ci"][0] > b["ci"][1]:
        return "higher (95 % CIs apart)"
    if a["ci"][1] < b["ci"][0]:
        return "lower (95 % CIs apart)"
    return "not separable (95 % CIs overlap)"


def _diff(p: dict | None) -> str:
    """A paired difference in words: higher / lower when its 95 % interval excludes 0, else no clear difference."""
    if not p:
        return "n/a"
    word = "higher" if p["ci"][0] > 0 else "lower" if p["ci"][1] < 0 else "no clear difference"
    return f"{word} (difference {p['diff']:+.3f}, paired 95 % CI {p['ci'][0]:+.3f} to {p['ci'][1]:+.3f})"


def _sm_vs_deep(x: dict) -> str:
    p = x.get("shallow_middle_minus_deep")
    return _diff(p) if p else _cmp(x["shallow_or_middle"], x["deep"])


def fusion_tally(findings: dict) -> dict:
    """Tasks where the fusion is above / level with / below the best single layer (paired 95 % CI of the
    difference excludes 0 or not; CI overlap when no paired difference is available)."""
    out = {"above": [], "level": [], "below": []}
    for t, x in findings.items():
        v = _diff(x.get("fusion_minus_best")) if x.get("fusion_minus_best") else _cmp(x["fusion"], x["best"])
        out["above" if v.startswith("higher") else "below" if v.startswith("lower") else "level"].append(t)
    return out


def record_payload(vr: VisionRun, results: pd.DataFrame) -> dict:
    """What chapter 06 measured, for the reproduction-status page (:func:`status_rows`)."""
    names = group_names(len(vr.groups))
    return {"model": vr.model_id, "vision_layers": vr.n_layers, "image_size": vr.image_size,
            "n_per_class": vr.n_per_class, "n_images": vr.n_images, "seed": vr.seed, "data": vr.data_label,
            # a list, not a dict: notebooks store JSON with sorted keys, which would reorder the groups
            "groups": [[n, g[0], g[-1]] for n, g in zip(names, vr.groups)], "fusion_layers": list(vr.fusion),
            "fusion_rule": vr.fusion_rule, "default_layer": vr.default_layer,
            "feature_set": str(results.feature_set.iloc[0]), "tasks": task_findings(vr, results),
            "group_table": json.loads(vr.group_table().to_json(orient="records"))}


def _acc(x: dict | None) -> str:
    return "—" if not x else f"{x['accuracy']:.3f} (layer {x['layer']})"


def _num(x) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x}"


def status_rows(rec: dict | None) -> list[str]:
    """Markdown table rows ``| claim | reported (source) | measured here | model |`` for paper C's claims.

    Reported values come only from ``shared/reference/papers.md`` (labelled confirmed / secondary there).
    """
    na = "not measured in this build"
    m = f"`{rec['model']}`" if rec else "—"
    rows = []

    def row(claim, reported, measured):
        rows.append(f"| {claim} | {reported} | {measured} | {m} |")

    if rec:
        V = rec["vision_layers"]
        groups = sorted(rec["groups"], key=lambda g: g[1])
        gtxt = ", ".join(f"{n} {a}–{b}" if a != b else f"{n} {a}" for n, a, b in groups)
        gt = {r["group"]: r for r in rec["group_table"]}
        wb = "; ".join(f"{n}: within {_num(gt[n]['mean LRS within'])}, to others "
                       f"{_num(gt[n]['mean LRS to other groups'])}"
                       for n, _, _ in groups if n in gt)
        row("(C) LRS groups the vision encoder's layers into shallow, middle and deep",
            "stated qualitatively (**confirmed**, abstract)", f"groups cut from LRS (optimal contiguous segmentation): "
            f"{gtxt} of {V} blocks; mean LRS {wb}")
        ends = ", ".join(f"{b / V:.2f}" for _, _, b in groups)
        row("(C) Group boundaries (CLIP ViT-L/14-336, 24 layers)",
            "boundaries at layers 12, 20, 24 (**confirmed**, official figure caption); shallow 1–12, middle 13–20, "
            "deep 21–24 (**secondary**)", f"{gtxt}; group ends at normalized depth {ends} (the paper's 12, 20, 24 of 24 layers: 0.50, 0.83, 1.00)")
        T = rec["tasks"]
        r = T.get("reading")
        if r:
            row("(C) Deep layers are essential for OCR", "stated qualitatively (**confirmed**, abstract)",
                f"reading (held-out digits): best deep {_acc(r['deep'])} vs best shallow {_acc(r['shallow'])}, "
                f"best middle {_acc(r['middle'])}; best shallow/middle vs best deep: "
                f"{_sm_vs_deep(r)}")
        for t, label in (("count", "counting"), ("position", "positioning")):
            x = T.get(t)
            if x:
                row(f"(C) Shallow and middle layers beat deep ones on {label}",
                    "stated qualitatively (**confirmed**, abstract)",
                    f"{label}: best shallow/middle {_acc(x['shallow_or_middle'])} vs best deep {_acc(x['deep'])}: "
                    f"{_sm_vs_deep(x)}; the model's default layer {x['default']['layer']}: "
                    f"{x['default']['accuracy']:.3f}")
        tally = fusion_tally(T)
        detail = "; ".join(f"{t} {x['fusion']['accuracy']:.3f} vs {x['best']['accuracy']:.3f} (layer {x['best']['layer']})"
                           for t, x in T.items())
        row("(C) A lightweight shallow+middle+deep fusion beats single layers",
            "on 9 of 10 datasets (**confirmed**, abstract)",
            f"fusion of layers {'+'.join(map(str, rec['fusion_layers']))} vs the best single layer (picked on the "
            f"held-out images): above on {len(tally['above'])}, level on {len(tally['level'])}, below on "
            f"{len(tally['below'])} of {len(T)} tasks ({detail}; linear probes, not trained MLLMs)")
        row("(C) Middle layer beats the penultimate on CV-Bench", "layer 18 = 47.29 vs layer 23 = 44.26 (**secondary**)",
            "different benchmark and models: not comparable; see the counting/positioning rows")
        row("(C) Penultimate layer beats a middle layer on OCRBench", "233 vs 200 (**secondary**)",
            "different benchmark and models: not comparable; see the OCR row")
    else:
        for claim in ("(C) LRS groups the vision encoder's layers into shallow, middle and deep",
                      "(C) Deep layers are essential for OCR", "(C) Shallow and middle layers beat deep ones on counting "
                      "and positioning", "(C) A lightweight shallow+middle+deep fusion beats single layers"):
            row(claim, "stated qualitatively (**confirmed**, abstract)", na)
    row("(C) MLLMs trained with the projector on a shallow / middle / deep layer or the fusion (main experiment)",
        "LLaVA-style models 1.4B–7B, 10 datasets, 4 tasks (**confirmed**, abstract)",
        "not run: did not fit the CPU budget; chapter 6 probes the vision layers linearly instead" if rec else na)
    return rows


def findings_note(vr: VisionRun, results: pd.DataFrame) -> str:
    """The chapter's reading of its own numbers (markdown), written from the measured values."""
    T = task_findings(vr, results)
    names = group_names(len(vr.groups))
    gtxt = ", ".join(f"**{n}** {g[0]}–{g[-1]}" if len(g) > 1 else f"**{n}** {g[0]}" for n, g in zip(names, vr.groups))
    lines = [f"On `{vr.model_id}` ({vr.n_layers} vision blocks) LRS cuts the blocks into {gtxt}; the fusion reads "
             f"layers {' + '.join(map(str, vr.fusion))} (each group's {vr.fusion_rule} layer) and the model's own "
             f"projector reads layer {vr.default_layer}.", ""]
    for t, x in T.items():
        per = ", ".join(f"{n} {x[n]['accuracy']:.3f}" for n in names if x.get(n))
        lines.append(f"- **{TASK_TITLES[t]}** (chance {x['chance']:.3f}, {x['n_test']} held-out images): best layer "
                     f"{x['best']['layer']} ({x['best']['group']}, {x['best']['accuracy']:.3f}); best per group: {per}; "
                     f"default layer {x['default']['accuracy']:.3f}; fusion {x['fusion']['accuracy']:.3f}, "
                     f"vs the best single layer: {_diff(x.get('fusion_minus_best'))}; best shallow/middle vs "
                     f"best deep: {_diff(x.get('shallow_middle_minus_deep'))}.")
    if len(vr.groups) < 3:
        lines += ["", f"_This tower has {vr.n_layers} blocks, too few for three groups: the groups are "
                      f"{', '.join(names)}, and the paper's shallow/middle/deep comparison is only partly posed._"]
    return "\n".join(lines)


# ---- charts ---------------------------------------------------------------------------------------------


def _group_bands(vr: VisionRun) -> pd.DataFrame:
    rows = [{"group": "embeddings", "start": -0.5, "end": 0.5, "first_layer": 0, "last_layer": 0}]
    for name, g in zip(group_names(len(vr.groups)), vr.groups):
        rows.append({"group": name, "start": g[0] - 0.5, "end": g[-1] + 0.5, "first_layer": g[0], "last_layer": g[-1]})
    return pd.DataFrame(rows)


def _group_scale():
    import altair as alt

    return alt.Scale(domain=list(GROUP_COLORS), range=list(GROUP_COLORS.values()))


def lrs_chart(vr: VisionRun, *, cap: str | None = None, title: str = "Layer-wise representation similarity (LRS)"):
    """Heatmap of LRS between every pair of vision layers (0 = patch embeddings), the group cuts as lines."""
    import altair as alt

    from ...book.plots import finish

    S = vr.lrs
    L = S.shape[0]
    d = pd.DataFrame([{"layer i": i, "layer j": j, "x": j - 0.5, "x2": j + 0.5, "y": i - 0.5, "y2": i + 0.5,
                       "LRS": float(S[i, j])} for i in range(L) for j in range(L)])
    cap = cap or vr.caption(extra="LRS averaged over patch tokens and all task images; lines: group cuts")
    ax = dict(scale=alt.Scale(domain=[-0.5, L - 0.5], nice=False, zero=False))
    heat = alt.Chart(d).mark_rect().encode(
        x=alt.X("x:Q", title="vision layer j", axis=alt.Axis(values=list(range(L)), tickMinStep=1), **ax), x2="x2:Q",
        y=alt.Y("y:Q", title="vision layer i", axis=alt.Axis(values=list(range(L)), tickMinStep=1),
                scale=alt.Scale(domain=[L - 0.5, -0.5], nice=False, zero=False)), y2="y2:Q",
        color=alt.Color("LRS:Q", scale=alt.Scale(scheme="viridis"), title="mean cos"),
        tooltip=["layer i:Q", "layer j:Q", alt.Tooltip("LRS:Q", format=".3f")])
    layers = [heat]
    if L <= 16:
        layers.append(alt.Chart(d).mark_text(fontSize=9).encode(
            x=alt.X("layer j:Q"), y=alt.Y("layer i:Q"), text=alt.Text("LRS:Q", format=".2f"),
            color=alt.condition(f"datum.LRS > {(float(S.min()) + float(S.max())) / 2:.6f}", alt.value("black"),
                                alt.value("white"))))
    cuts = pd.DataFrame([{"at": g[0] - 0.5, "label": f"{n} starts at layer {g[0]}"}
                         for n, g in zip(group_names(len(vr.groups)), vr.groups)])
    layers.append(alt.Chart(cuts).mark_rule(color="#ff4136", strokeWidth=2).encode(x="at:Q", tooltip=["label:N"]))
    layers.append(alt.Chart(cuts).mark_rule(color="#ff4136", strokeWidth=2).encode(y="at:Q", tooltip=["label:N"]))
    side = min(380, 40 * L + 60)
    chart = alt.layer(*layers).properties(width=side, height=side)
    return finish(chart, title, cap)


def task_chart(vr: VisionRun, results: pd.DataFrame, *, cap: str | None = None, columns: int = 2,
               title: str = "Task-probe accuracy by vision layer, with the groups and the fusion"):
    """Per task: held-out accuracy of the per-layer probes (line, 95 % CI band), the fusion probe (dashed
    line, its CI as a horizontal band), chance (dotted), the model's default layer (grey rule), the groups
    as background bands."""
    import altair as alt

    from ...book.plots import finish

    bands = _group_bands(vr)
    L = vr.n_layers
    xs = alt.Scale(domain=[-0.5, L + 0.5], nice=False, zero=False)
    charts = []
    for t, g in results.groupby("task", sort=False):
        lay = g[g.kind == "layer"].copy()
        fus = g[g.kind == "fusion"].copy().assign(x0=-0.5, x1=L + 0.5, label=lambda d: "fusion " + d.layers)
        base = alt.Chart(lay).encode(x=alt.X("layer:Q", scale=xs, title="vision layer (0 = patch embeddings)",
                                             axis=alt.Axis(values=list(range(L + 1)))))
        tooltip = ["layer:Q", "group:N", alt.Tooltip("accuracy:Q", format=".3f"),
                   alt.Tooltip("ci_low:Q", format=".3f", title="CI low"),
                   alt.Tooltip("ci_high:Q", format=".3f", title="CI high"), alt.Tooltip("n_test:Q", title="n test")]
        parts = [
            alt.Chart(bands).mark_rect(opacity=0.2).encode(
                x=alt.X("start:Q", scale=xs), x2="end:Q",
                color=alt.Color("group:N", scale=_group_scale(), title="layer group", legend=alt.Legend(orient="bottom")),
                tooltip=["group:N", alt.Tooltip("first_layer:Q", title="first layer"),
                         alt.Tooltip("last_layer:Q", title="last layer")]),
            alt.Chart(fus).mark_rect(opacity=0.15, color="#f58518").encode(x="x0:Q", x2="x1:Q", y="ci_low:Q",
                                                                        y2="ci_high:Q"),
            alt.Chart(fus).mark_rule(color="#f58518", strokeDash=[6, 3], strokeWidth=2).encode(
                y="accuracy:Q", tooltip=["label:N", alt.Tooltip("accuracy:Q", format=".3f"),
                                         alt.Tooltip("ci_low:Q", format=".3f", title="CI low"),
                                         alt.Tooltip("ci_high:Q", format=".3f", title="CI high")]),
            base.mark_area(opacity=0.25, color="#333").encode(
                y=alt.Y("ci_low:Q", scale=alt.Scale(domain=[0, 1]), title="held-out probe accuracy"), y2="ci_high:Q"),
            base.mark_line(point=True, color="#222").encode(y="accuracy:Q", tooltip=tooltip),
            alt.Chart(pd.DataFrame({"chance": [float(g.chance.iloc[0])]})).mark_rule(
                strokeDash=[1, 3], color="#777").encode(y="chance:Q", tooltip=[alt.Tooltip("chance:Q", format=".3f")]),
            alt.Chart(pd.DataFrame({"layer": [vr.default_layer],
                                    "label": [f"the model's default layer ({vr.default_layer})"]})).mark_rule(
                color="#888", strokeWidth=1.5).encode(x=alt.X("layer:Q", scale=xs), tooltip=["label:N"]),
        ]
        charts.append(alt.layer(*parts).properties(width=230, height=170, title=TASK_TITLES[t]))
    chart = alt.concat(*charts, columns=columns).resolve_scale(color="shared")
    cap = cap or vr.caption(extra=f"{int(results.n_test.iloc[0])}+ held-out images per task; 95 % bootstrap CIs; "
                                  f"dashed orange: fusion of layers {'+'.join(map(str, vr.fusion))}")
    return finish(chart, title, cap)


def samples_html(vr: VisionRun, per_class: int = 3, size: int = 48) -> str:
    """A few images per class of every task, as an HTML table with inline PNGs."""
    import html as h

    from PIL import Image

    from ...book.plots import img_tag

    rng = np.random.default_rng(vr.seed)
    rows = []
    for t, task in vr.tasks.items():
        cells = []
        for c, name in enumerate(task.classes):
            idx = np.flatnonzero(task.labels == c)
            imgs = []
            for i in rng.choice(idx, min(per_class, len(idx)), replace=False):
                imgs.append(img_tag(Image.fromarray(task.images[i]), size, alt=name))
            cells.append(f"<div style='display:inline-block;margin:0 8px 4px 0;text-align:center'>{''.join(imgs)}"
                         f"<br><small>{h.escape(name)}</small></div>")
        rows.append(f"<tr><th style='text-align:right;vertical-align:top;padding-right:8px'>{h.escape(TASK_TITLES[t])}"
                    f"<br><small>{len(task)} images</small></th><td>{''.join(cells)}</td></tr>")
    return "<table class='probekit-samples'>" + "".join(rows) + "</table>"


def task_table(vr: VisionRun) -> pd.DataFrame:
    rows = []
    for t, task in vr.tasks.items():
        rows.append({"task": TASK_TITLES[t], "classes": len(task.classes), "images": len(task),
                     "label": {"class": "Fashion-MNIST class", "count": f"number of items (1–{len(task.classes)})",
                               "position": f"cell of a {task.grid}x{task.grid} grid",
                               "reading": "the digit"}[t],
                     "source": task.source})
    return pd.DataFrame(rows)


def model_facts(vr: VisionRun) -> pd.DataFrame:
    lm = vr.lm
    ident = lm.identity()
    vc = lm.model.config.vision_config
    facts = {"model": vr.model_id, "class": ident["architecture"],
             "vision tower": f"{type(vc).__name__.replace('Config', '')}: {vr.n_layers} blocks, width "
                             f"{getattr(vc, 'hidden_size', getattr(vc, 'embed_dim', '?'))}, patch {vc.patch_size}",
             "image size (from the processor)": f"{vr.image_size} px",
             "states per image": f"{vr.n_layers + 1} (0 = patch embeddings, 1..{vr.n_layers} = blocks)",
             "the projector reads": f"layer {vr.default_layer}",
             "features cached at": str(vr.cache_path) if vr.cache_path else "—"}
    return pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]}).set_index("")


__all__ = ["VisionRun", "default_vision_layer", "feature_set_table", "findings_note", "fusion_tally", "groups_per_task", "lrs_chart", "model_facts",
           "probe_tasks", "record_payload", "run", "samples_html", "status_rows", "summary_table", "task_chart",
           "task_findings", "task_table"]
