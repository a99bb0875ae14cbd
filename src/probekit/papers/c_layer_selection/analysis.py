"""Paper C (arXiv 2504.21447), from stored arrays only: layer-wise representation similarity (LRS) over images,
its contiguous shallow / middle / deep groups, the fusion layers, and linear probes per vision layer.

Nothing here runs a model: :func:`probekit.extract.vision.extract_vision` stores per image and vision layer the
mean-pooled patch tokens, a ``grid x grid`` spatial pooling and the image's LRS matrix; this module reads them
(:meth:`VisionFeatures.from_store`) and computes

* :func:`mean_similarity` — LRS over images (the mean of the stored per-image matrices);
* :func:`group_layers` — the optimal contiguous segmentation of layers 1..V by their LRS rows;
* :func:`representative_layers` — one layer per group for the fusion (default: each group's last layer);
* :func:`probe_layers` / :func:`probe_tasks` — one linear probe per layer (``LayerProbes``) and one on the fusion
  (the representative layers concatenated), held-out accuracy with bootstrap CIs, all on the same split;
* the chapter's tables (:func:`summary_table`, :func:`feature_set_table`, :func:`groups_per_task`,
  :func:`task_table`, :func:`model_facts`, :meth:`VisionRun.group_table`).

Layer numbering follows paper C's official code: layer ``k`` is the vision tower's ``hidden_states[k]``
(0 = patch embeddings, 1..V = blocks).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...book.context import ChapterRun
from ...errors import ProbekitError
from ...store import ActivationStore
from .tasks import TASK_TITLES, VisionTask


def mean_similarity(per_image: np.ndarray) -> np.ndarray:
    """LRS ``[V+1, V+1]`` over images from the stored per-image matrices ``[n, V+1, V+1]`` (float32): summed in
    image order in float32, divided by ``n``, as float64 (the arithmetic of the extraction pass that computed it
    before the matrices were stored, so a stored run gives the same LRS bit for bit)."""
    x = torch.from_numpy(np.ascontiguousarray(per_image, dtype=np.float32))
    if x.ndim != 3 or not len(x) or x.shape[1] != x.shape[2]:
        raise ProbekitError(f"per-image similarities must be [n > 0, V+1, V+1], got shape {tuple(x.shape)}")
    total = x[0].clone()
    for s in x[1:]:
        total = total + s
    return (total / len(x)).double().numpy()


# ---- LRS groups ---------------------------------------------------------------------------------------


def group_layers(similarity: np.ndarray, n_groups: int = 3, *, first: int = 1, min_size: int = 1) -> list[range]:
    """Cut layers ``first..V`` into ``n_groups`` contiguous groups (shallow, middle, deep for 3).

    Each layer is described by its row of the similarity matrix (its similarity to every layer); the cut
    minimises the within-group sum of squared distances of those rows to their group mean — the optimal
    contiguous segmentation (Fisher 1958), found exactly by dynamic programming. Layers that represent
    alike have alike rows, so blocks of mutually similar layers become groups. Returns ``range`` objects
    of layer indices.
    """
    S = np.asarray(similarity, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ProbekitError(f"similarity must be a square matrix, got shape {S.shape}")
    X = S[first:]  # rows of the layers to group
    n = len(X)
    if not 1 <= n_groups <= n // max(min_size, 1):
        raise ProbekitError(f"cannot cut {n} layers into {n_groups} groups of at least {min_size}")
    # cost[a, b]: within-segment sum of squares of rows a..b-1, from prefix sums
    c1 = np.vstack([np.zeros(X.shape[1]), np.cumsum(X, 0)])
    c2 = np.concatenate([[0.0], np.cumsum((X**2).sum(1))])

    def cost(a, b):
        m = b - a
        return c2[b] - c2[a] - ((c1[b] - c1[a]) ** 2).sum() / m

    best = np.full((n_groups + 1, n + 1), np.inf)
    arg = np.zeros((n_groups + 1, n + 1), dtype=int)
    best[0, 0] = 0.0
    for g in range(1, n_groups + 1):
        for b in range(g * min_size, n + 1):
            for a in range((g - 1) * min_size, b - min_size + 1):
                v = best[g - 1, a] + cost(a, b)
                if v < best[g, b] - 1e-12:
                    best[g, b], arg[g, b] = v, a
    cuts, b = [], n
    for g in range(n_groups, 0, -1):
        a = arg[g, b]
        cuts.append(range(a + first, b + first))
        b = a
    return cuts[::-1]


@dataclass
class VisionFeatures:
    """Per image and vision layer (0 = patch embeddings .. V): ``mean`` [n, V+1, d] (mean over patch tokens)
    and ``grid`` [n, V+1, grid*grid*d] (mean inside each cell of a grid x grid partition, row-major);
    ``lrs`` [V+1, V+1] the LRS over these images (:func:`mean_similarity`)."""

    mean: np.ndarray
    grid: np.ndarray
    lrs: np.ndarray
    grid_size: int

    FEATURE_SETS = ("mean", "grid", "mean+grid")

    def __len__(self) -> int:
        return len(self.mean)

    @property
    def n_layers(self) -> int:
        return self.mean.shape[1]

    def features(self, kind: str = "mean+grid") -> np.ndarray:
        """``mean``, ``grid`` or ``mean+grid`` (concatenated on the feature axis) as ``[n, V+1, d']``."""
        if kind == "mean":
            return self.mean
        if kind == "grid":
            return self.grid
        if kind == "mean+grid":
            return np.concatenate([self.mean, self.grid], -1)
        raise ProbekitError(f"unknown feature set {kind!r}; use one of {', '.join(self.FEATURE_SETS)}")

    def subset(self, idx) -> VisionFeatures:
        return VisionFeatures(self.mean[idx], self.grid[idx], self.lrs, self.grid_size)

    @classmethod
    def from_store(cls, store: ActivationStore) -> VisionFeatures:
        """The features of a store written by :func:`probekit.extract.vision.extract_vision`."""
        return cls(store.array("mean"), store.array("grid"), mean_similarity(store.array("lrs")),
                   int(store.extra["grid"]))


def overall_similarity(features: Mapping[str, VisionFeatures]) -> np.ndarray:
    """LRS over the images of every task: the tasks' LRS weighted by their image counts."""
    n = {t: len(f) for t, f in features.items()}
    return sum(features[t].lrs * n[t] for t in features) / sum(n.values())


# ---- fusion and probes ----------------------------------------------------------------------------------

GROUP_NAMES = ("shallow", "middle", "deep")


def group_names(n_groups: int) -> list[str]:
    """shallow / middle / deep for 3 groups (shallow / deep for 2, as for a 2-block tower); else numbered."""
    if n_groups == 3:
        return list(GROUP_NAMES)
    if n_groups == 2:
        return ["shallow", "deep"]
    return [f"group {i + 1}" for i in range(n_groups)]


def representative_layers(groups: Sequence[range], rule: str = "last") -> list[int]:
    """One layer per group for the fusion: ``last`` (the group's last layer: the most processed state of that
    kind of representation), ``middle`` (its middle layer) or ``first``."""
    pick = {"last": lambda g: g[-1], "middle": lambda g: g[(len(g) - 1) // 2], "first": lambda g: g[0]}
    if rule not in pick:
        raise ProbekitError(f"unknown fusion rule {rule!r}; use one of {', '.join(pick)}")
    return [int(pick[rule](g)) for g in groups]


def layer_group(layer: int, groups: Sequence[range]) -> str:
    names = group_names(len(groups))
    for name, g in zip(names, groups):
        if layer in g:
            return name
    return "embeddings" if layer == 0 else "—"


def probe_layers(X: np.ndarray, y: np.ndarray, *, fusion: Sequence[int] | None = None, test_size: float = 0.3,
                 seed: int = 0, C: float = 1.0, n_boot: int = 1000, task: str | None = None):
    """Held-out accuracy of one linear probe per layer of ``X`` [n, L, d], and of one probe on the fusion
    (layers ``fusion`` concatenated on the feature axis), on one stratified split, with percentile-bootstrap
    95 % CIs over the held-out images. Returns a DataFrame with rows ``layer`` 0..L-1 (``kind='layer'``)
    and, if ``fusion`` is given, one row ``kind='fusion'`` (``layer`` = -1, ``layers`` = the fused ones)."""
    from ...probes import LayerProbes, split_items
    from ...stats import bootstrap_ci

    y = np.asarray(y)
    tr, te = split_items(y, test_size=test_size, seed=seed)
    probes = LayerProbes(C=C, seed=seed).fit(X[tr], y[tr])
    correct = probes.predict(X[te]) == y[te][:, None]
    cols = [correct]
    if fusion:
        Xf = X[:, list(fusion)].reshape(len(X), 1, -1)
        fp = LayerProbes(C=C, seed=seed).fit(Xf[tr], y[tr])
        cols.append(fp.predict(Xf[te]) == y[te][:, None])
    correct = np.concatenate(cols, 1)
    acc, lo, hi = bootstrap_ci(correct, n_boot=n_boot, seed=seed)
    chance = float(np.bincount(y[te]).max() / len(te))
    rows = []
    for i in range(X.shape[1] + (1 if fusion else 0)):
        fused = i == X.shape[1]
        rows.append({"task": task, "kind": "fusion" if fused else "layer", "layer": -1 if fused else i,
                     "layers": "+".join(map(str, fusion)) if fused else str(i), "accuracy": float(acc[i]),
                     "ci_low": float(lo[i]), "ci_high": float(hi[i]), "chance": chance, "n_train": len(tr),
                     "n_test": len(te), "n_features": int(X.shape[2] * (len(fusion) if fused else 1))})
    df = pd.DataFrame(rows)
    df.attrs["correct"] = correct  # [n_test, rows]: per held-out image, right or wrong, in row order
    return df


# ---- the run and its tables ----------------------------------------------------------------------------


@dataclass
class VisionRun(ChapterRun):
    """One model's vision tower on the four tasks: features, LRS, groups, fusion layers, and what the store says
    of the tower (``facts``: vision layers, the projector's layer, image size, tower config, model class)."""

    model_id: str
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
    facts: dict = field(default_factory=dict)
    cache_path: Path | None = None
    from_cache: bool = False
    lm: object | None = None  # the LoadedModel when this run extracted (None when it read a complete store)
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
        """The vision layer the model's projector reads (recorded in the store at extraction)."""
        return int(self.facts["default_layer"])

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
    f = vr.facts
    facts = {"model": vr.model_id, "class": f["architecture"],
             "vision tower": f"{f['vision_config'].replace('Config', '')}: {vr.n_layers} blocks, width "
                             f"{f['width']}, patch {f['patch']}",
             "image size (from the processor)": f"{vr.image_size} px",
             "states per image": f"{vr.n_layers + 1} (0 = patch embeddings, 1..{vr.n_layers} = blocks)",
             "the projector reads": f"layer {vr.default_layer}",
             "features cached at": str(vr.cache_path) if vr.cache_path else "—"}
    return pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]}).set_index("")


__all__ = ["GROUP_NAMES", "VisionFeatures", "VisionRun", "feature_set_table", "group_layers", "group_names",
           "groups_per_task", "layer_group", "mean_similarity", "model_facts", "overall_similarity", "probe_layers",
           "probe_tasks", "representative_layers", "summary_table", "task_table"]
