"""Paper B's measurements on the chapter's stores: :class:`TokensRun` (what :func:`.chapter.run` found or extracted,
read back as arrays per feature) and :func:`measure` (the readouts of :mod:`.readouts` per condition, task,
feature kind and layer, with 95 % bootstrap intervals over images), and the paired differences the notes and
the record report (:func:`findings`). Nothing here runs a model: every number comes from the stores.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...book.context import ChapterRun
from ...errors import ProbekitError
from ...models import LoadedModel
from ...store import ActivationStore
from ..c_layer_selection.tasks import VisionTask
from . import readouts as vt

VIEWS = ("original", "flip", "shift")
CONDITIONS = ("plain", "prefix", "blocked")
KINDS = ("values", "keys", "hidden")
BASELINES = ("vision encoder", "projector")
TASKS = {  # task -> (main metric, other metrics)
    "segmentation": ("mIoU", ("balanced accuracy",)),
    "correspondence (flip)": ("PCK exact", ("PCK within 1 cell",)),
    "correspondence (shift)": ("PCK exact", ("PCK within 1 cell",)),
    "text query": ("AUROC", ("AUROC, other classes' queries",)),
}


def check_param(name: str, value, ok, what: str) -> None:
    """Raise one :class:`~probekit.errors.ProbekitError` naming the parameter when ``ok(value)`` is false (a bool
    never passes for a number)."""
    if isinstance(value, bool) or not ok(value):
        raise ProbekitError(f"parameter {name}={value!r} must be {what}")


@dataclass
class TokensRun(ChapterRun):
    """One model's image tokens on Fashion-MNIST test images: stores per (condition, view), masks, queries.

    ``identity`` is the model's (:func:`probekit.models.identify`); ``lm`` the model when this run had to load it
    to extract a missing store (None: every store was found); ``facts`` what the queries store records of the
    model (:func:`probekit.extract.kv.extract_queries`: depth, key / value width, image size, token grid)."""

    model_id: str
    identity: dict
    facts: dict
    task: VisionTask
    views: dict[str, np.ndarray]
    masks: np.ndarray  # [n, C] bool, cells row-major
    grid: tuple[int, int]
    cells: np.ndarray  # [T]: each image token's cell, -1 none
    layers: list[int]
    stores: dict[tuple[str, str], ActivationStore]
    query_store: ActivationStore
    conditions: dict[str, dict]  # name -> {"prefix", "block"}
    variance: np.ndarray  # [len(layers), T] normalized cross-image key variance (plain, original view)
    input_variance: np.ndarray  # [T] the same ratio for the projector output (the LM's input) at each token
    agnostic: dict[int, list[int]]  # the rule's input-agnostic keys: layer -> image-token indices
    block: dict[int, list[int]]  # what the blocked condition blocks
    block_source: str | None  # "rule", "stand-in" or None (no blocking)
    queries: dict[str, np.ndarray]  # kind -> [classes, layers(+1), d]
    query_texts: list[str]
    prompt: str
    prefix: str | None
    shift: int
    ink: int
    min_fraction: float
    threshold: float
    late_from: float
    seed: int
    n_per_class: int
    image_size: int
    causality: dict
    lm: LoadedModel | None = None
    from_cache: bool = False
    cache_root: Path | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_images(self) -> int:
        return len(self.task)

    @property
    def n_layers(self) -> int:
        return int(self.facts["num_layers"])

    @property
    def n_cells(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def late(self) -> list[int]:
        return vt.late_layers(self.layers, self.n_layers, self.late_from)

    @property
    def data_label(self) -> str:
        return f"Fashion-MNIST test at {self.image_size} px ({self.n_per_class} per class, 10 classes)"

    def feature(self, condition: str, view: str, kind: str, layer: int | None = None) -> np.ndarray:
        """``[n, C, d]`` per cell (row-major) of one feature: ``kind`` values / keys (``layer`` a decoder block)
        / hidden (``layer`` 0..L, 0 = projector output) / vision encoder / projector."""
        key = (condition, view, kind, layer)
        if key not in self._cache:
            st = self.stores[(condition, view)]
            if kind in ("values", "keys"):
                x = st.array(kind, self.layers.index(layer))
            elif kind == "hidden":
                x = st.array("hidden", 0 if layer == 0 else 1 + self.layers.index(layer))
            elif kind == "projector":
                x = st.array("hidden", 0)
            elif kind == "vision encoder":
                x = st.array("vision")
            else:
                raise ProbekitError(f"unknown feature kind {kind!r}")
            self._cache[key] = vt.by_cell(x, self.cells, self.n_cells)
        return self._cache[key]


@dataclass
class Perception:
    """The chapter's measurements: ``table`` (one row per condition, task, metric, kind, layer; layer -1 for the
    baselines) with score, 95 % percentile-bootstrap CI over images, chance; ``boot`` the bootstrap draws per row
    (paired: every row of a task resamples the same images)."""

    table: pd.DataFrame
    boot: dict
    n_boot: int
    shots: int
    episodes: int
    n_test: int

    def row(self, condition, task, metric, kind, layer=-1) -> pd.Series:
        t = self.table
        sel = t[(t.condition == condition) & (t.task == task) & (t.metric == metric) & (t.kind == kind)
                & (t.layer == layer)]
        if len(sel) != 1:
            raise ProbekitError(f"no measurement {(condition, task, metric, kind, layer)}")
        return sel.iloc[0]

    def diff(self, a: tuple, b: tuple) -> dict:
        """Score of row ``a`` minus row ``b`` (keys ``(condition, task, metric, kind, layer)``), with the paired
        95 % bootstrap interval."""
        da, db = self.boot[tuple(a)], self.boot[tuple(b)]
        d = da - db
        ok = ~np.isnan(d)
        lo, hi = np.quantile(d[ok], [0.025, 0.975]) if ok.any() else (np.nan, np.nan)
        return {"diff": float(self.row(*a).score - self.row(*b).score), "ci": [float(lo), float(hi)]}

    def mean_diff(self, a: str, b: str, task: str, layers, metric: str | None = None, kind: str = "values") -> dict | None:
        """Mean over ``layers`` of (condition ``a`` minus condition ``b``) for one task and kind, with the paired
        95 % bootstrap interval (the same resampled images for every layer and both conditions)."""
        metric = metric or TASKS[task][0]
        layers = [int(l) for l in layers]
        if not layers:
            return None
        d = np.mean([self.boot[(a, task, metric, kind, l)] - self.boot[(b, task, metric, kind, l)] for l in layers], 0)
        point = np.mean([self.row(a, task, metric, kind, l).score - self.row(b, task, metric, kind, l).score
                         for l in layers])
        ok = ~np.isnan(d)
        lo, hi = np.quantile(d[ok], [0.025, 0.975]) if ok.any() else (np.nan, np.nan)
        return {"diff": float(point), "ci": [float(lo), float(hi)], "layers": layers}

    def best(self, condition: str, task: str, kind: str = "values", metric: str | None = None) -> pd.Series:
        metric = metric or TASKS[task][0]
        t = self.table
        sel = t[(t.condition == condition) & (t.task == task) & (t.metric == metric) & (t.kind == kind)]
        return sel.loc[sel.score.idxmax()]


def features(tr: TokensRun, condition: str) -> list[tuple[str, int]]:
    """(kind, layer) of every feature measured under ``condition`` (the baselines only under plain: the vision
    encoder and the projector do not see the text, so a prefix or a block cannot change them)."""
    out = [(k, l) for k in KINDS for l in tr.layers]
    if condition == "plain":
        out += [(b, -1) for b in BASELINES]
    return out


def query_vectors(tr: TokensRun, kind: str, layer: int) -> np.ndarray:
    """``[classes, d]``: the class names' last-token query matching a feature: the same kind at the same layer
    (values / keys of block ``layer``, hidden after block ``layer``); for the projector output, the token's
    input embedding (hidden layer 0)."""
    if kind in ("values", "keys"):
        return tr.queries[kind][:, layer - 1]
    if kind == "hidden":
        return tr.queries["hidden"][:, layer]
    if kind == "projector":
        return tr.queries["hidden"][:, 0]
    raise ProbekitError(f"the {kind} has no text side, so no text query")


def measure(tr: TokensRun, *, shots: int = 5, episodes: int = 5, test_size: float = 0.5, C: float = 1.0,
            n_boot: int = 1000) -> Perception:
    """Every measurement of the chapter, per condition and feature (kinds x layers, and the two baselines).

    - segmentation (few-shot): images split in half (stratified by class, seeded); ``episodes`` draws of
      ``shots`` training images from one half, each a logistic regression on their tokens, scored on every token of
      the other half: mIoU and balanced accuracy of the pooled predictions;
    - correspondence: nearest neighbour (cosine) of each foreground token of an image among the tokens of its
      mirrored / shifted view, PCK exact and within 1 cell, over all images;
    - text query: dot product of the class name's last token (same kind and layer; the projector's is the token
      embedding, layer 0 of hidden) with the image's tokens; AUROC per image against the foreground mask, with
      the image's own class and (control) the other nine classes. The vision encoder has no text side: no query.
    """
    from sklearn.model_selection import train_test_split

    check_param("shots", shots, lambda v: isinstance(v, int) and v >= 1, "a positive integer")
    check_param("episodes", episodes, lambda v: isinstance(v, int) and v >= 1, "a positive integer")
    n = tr.n_images
    pool, test = train_test_split(np.arange(n), test_size=test_size, stratify=tr.task.labels, random_state=tr.seed)
    pool, test = np.sort(pool), np.sort(test)
    if shots > len(pool):
        raise ProbekitError(f"shots={shots} is more than the {len(pool)} training images; lower shots or raise n_per_class")
    eps = vt.segmentation_episodes(pool, tr.masks, shots=shots, episodes=episodes, seed=tr.seed)
    rng = np.random.default_rng(tr.seed)
    idx_test = rng.integers(0, len(test), size=(n_boot, len(test)))
    idx_all = rng.integers(0, n, size=(n_boot, n))
    y = tr.masks
    fmap, smap = vt.flip_map(tr.grid), vt.shift_map(tr.grid, tr.shift)
    labels = tr.task.labels
    rows, boot = [], {}

    def add(cond, task, metric, kind, layer, score, draws, chance, n_img):
        lo, hi = np.nanquantile(draws, [0.025, 0.975]) if np.isfinite(draws).any() else (np.nan, np.nan)
        rows.append({"condition": cond, "task": task, "metric": metric, "kind": kind, "layer": int(layer),
                     "score": float(score), "ci_low": float(lo), "ci_high": float(hi), "chance": chance, "n": n_img})
        boot[(cond, task, metric, kind, int(layer))] = draws

    for cond in tr.conditions:
        for kind, layer in features(tr, cond):
            def get(view, cond=cond, kind=kind, layer=layer):
                return tr.feature(cond, view, kind, None if layer < 0 else layer)

            X = get("original")
            seg = vt.few_shot_segmentation(X, y, eps, test, C=C, seed=tr.seed)
            cnt = seg["counts"][idx_test].sum(1)  # [B, 4]
            add(cond, "segmentation", "mIoU", kind, layer, seg["miou"], vt.miou_from_counts(cnt), np.nan, len(test))
            add(cond, "segmentation", "balanced accuracy", kind, layer, seg["balanced_accuracy"],
                vt.balanced_accuracy_from_counts(cnt), 0.5, len(test))
            for task, view, mp in (("correspondence (flip)", "flip", fmap), ("correspondence (shift)", "shift", smap)):
                c = vt.correspondence(X, get(view), mp, y, tr.grid)
                pts = c["points"][idx_all].sum(1)
                add(cond, task, "PCK exact", kind, layer, c["pck0"], c["hits0"][idx_all].sum(1) / pts, c["chance0"], n)
                add(cond, task, "PCK within 1 cell", kind, layer, c["pck1"], c["hits1"][idx_all].sum(1) / pts,
                    c["chance1"], n)
            if kind == "vision encoder":
                continue
            Q = query_vectors(tr, kind, layer)  # [classes, d]
            auc = vt.query_auroc(vt.query_scores(X, Q[labels]), y)
            k = len(tr.task.classes)
            with warnings.catch_warnings():  # an image whose tokens are all foreground has no AUROC (NaN)
                warnings.simplefilter("ignore", RuntimeWarning)
                other = np.nanmean([vt.query_auroc(vt.query_scores(X, Q[(labels + s) % k]), y) for s in range(1, k)], 0)
                add(cond, "text query", "AUROC", kind, layer, np.nanmean(auc), np.nanmean(auc[idx_all], 1), 0.5, n)
                add(cond, "text query", "AUROC, other classes' queries", kind, layer, np.nanmean(other),
                    np.nanmean(other[idx_all], 1), 0.5, n)
    table = pd.DataFrame(rows)
    return Perception(table=table, boot=boot, n_boot=n_boot, shots=shots, episodes=episodes, n_test=len(test))


def affected_layers(tr: TokensRun, condition: str) -> list[int]:
    """The layers whose image values a condition can change: a prefix changes values from block 2 on (block 1's
    values are a projection of the token's own embedding); blocking at layers S changes the values of blocks
    after min(S) (block l's values come from block l-1's output)."""
    if condition == "prefix":
        return [l for l in tr.layers if l >= 2]
    if condition == "blocked":
        return [l for l in tr.layers if tr.block and l > min(tr.block)]
    return list(tr.layers)


def findings(tr: TokensRun, res: Perception) -> dict:
    """Per task: baselines, the best values layer, and paired differences (values best layer vs projector, vs
    vision encoder; prefix and blocked vs plain at the same layer)."""
    out = {}
    for task, (metric, _) in TASKS.items():
        b = res.best("plain", task)
        key = ("plain", task, metric, "values", int(b.layer))
        x = {"metric": metric, "best_values": {"layer": int(b.layer), "score": float(b.score),
                                               "ci": [float(b.ci_low), float(b.ci_high)]}}
        ch = res.table[(res.table.task == task) & (res.table.metric == metric)].chance.dropna()
        x["chance"] = float(ch.iloc[0]) if len(ch) else None
        for base in BASELINES:
            bk = ("plain", task, metric, base, -1)
            if bk in res.boot:
                r = res.row(*bk)
                x[base] = {"score": float(r.score), "ci": [float(r.ci_low), float(r.ci_high)]}
                x[f"values_minus_{base}"] = res.diff(key, bk)
        for cond in tr.conditions:
            if cond != "plain":
                cb = res.best(cond, task)
                x[cond] = {"layer": int(cb.layer), "score": float(cb.score)}
                x[f"{cond}_minus_plain"] = res.mean_diff(cond, "plain", task, affected_layers(tr, cond))
        if task == "text query":
            x["other_classes"] = float(res.row("plain", task, TASKS[task][1][0], "values", int(b.layer)).score)
            x["true_minus_other"] = res.diff(key, ("plain", task, TASKS[task][1][0], "values", int(b.layer)))
        out[task] = x
    return out


__all__ = ["BASELINES", "CONDITIONS", "KINDS", "TASKS", "VIEWS", "Perception", "TokensRun", "affected_layers",
           "check_param", "features", "findings", "measure", "query_vectors"]
