"""Chapter 05 (paper B, arXiv 2510.04819): visual tokens inside the language model, as library calls.

    from probekit import visual_tokens_chapter as vtc
    tr = vtc.run("llava-organism", n_per_class=20, cache_dir=".cache/probekit", seed=0)
    res = vtc.measure(tr)              # per (condition, task, feature, layer): score and 95 % bootstrap CI
    vtc.perception_chart(tr, res); vtc.variance_chart(tr); vtc.conditions_chart(tr, res)   # altair
    vtc.record_payload(tr, res)        # what the reproduction-status page needs

:func:`run` loads the model, takes Fashion-MNIST **test** images at the model's image size (the organisms
never trained on them), derives each image token's foreground mask from the clean black background
(:func:`probekit.papers.b_visual_tokens.analysis.foreground_masks`), and extracts the image tokens' keys, values, hidden states
and vision-encoder / projector counterparts (:func:`probekit.extract.kv.extract_image_tokens`, each set of images in its
own :class:`~probekit.store.ActivationStore` under ``cache_dir/visual_tokens``; a second run re-uses them) for
three views of every image — as is, mirrored left-right, shifted right by whole tokens — under three
conditions:

- ``plain``: the image first in the user turn, the question after it;
- ``prefix``: a short text before the image (:func:`probekit.prompts.template`'s ``prefix``);
- ``blocked``: as ``plain``, with attention to the input-agnostic late-layer keys blocked
  (:func:`probekit.extract.kv.blocked_attention`); when the rule finds none, the lowest-variance late-layer keys stand
  in, labelled as such.

:func:`measure` scores few-shot foreground segmentation, correspondence under the flip and the shift, and
text-query segmentation per layer, for each feature kind and each condition.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...book.context import ChapterRun, load, slug
from ...errors import ProbekitError, StoreError
from ...extract.kv import (
    KV_VERSION,
    extract_image_tokens,
    image_states,
    text_states,
    token_grid,
)
from ...models import LoadedModel
from ...store import ActivationStore, key_sha256
from ..c_layer_selection.tasks import VisionTask, class_task, model_image_size
from . import analysis as vt

RECORD_NAME = "visual_tokens"
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
COLORS = {"values": "#4c78a8", "keys": "#f58518", "hidden": "#54a24b", "vision encoder": "#e45756",
          "projector": "#9d755d", "values, other classes' queries": "#9ecae9"}
CONDITION_COLORS = {"plain": "#4c78a8", "prefix": "#54a24b", "blocked": "#b279a2"}
SECOND_PROMPT = "Is this a fashion item? Answer yes or no."  # the causality check's other question


def class_phrase(name: str) -> str:
    """A class name with its indefinite article ('a sneaker', 'an ankle boot')."""
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


@dataclass
class TokensRun(ChapterRun):
    """One model's image tokens on Fashion-MNIST test images: stores per (condition, view), masks, queries."""

    model_id: str
    lm: LoadedModel
    task: VisionTask
    views: dict[str, np.ndarray]
    masks: np.ndarray  # [n, C] bool, cells row-major
    grid: tuple[int, int]
    cells: np.ndarray  # [T]: each image token's cell, -1 none
    layers: list[int]
    stores: dict[tuple[str, str], ActivationStore]
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
    from_cache: bool = False
    cache_root: Path | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def n_images(self) -> int:
        return len(self.task)

    @property
    def n_layers(self) -> int:
        return int(self.lm.num_layers)

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


def _check(name, value, ok, what):
    if isinstance(value, bool) or not ok(value):
        raise ProbekitError(f"parameter {name}={value!r} must be {what}")


def store_path(cache_dir, lm: LoadedModel, task: VisionTask, view: str, condition: str, spec: dict) -> Path:
    """``cache_dir/visual_tokens/<model slug>/<condition>-<view>-<hash of what changes the numbers>``."""
    key = {"model": lm.identity(), "task": task.identity(), "view": view, "spec": spec, "version": KV_VERSION}
    h = key_sha256(key, 16)
    return Path(cache_dir) / "visual_tokens" / slug(lm.model_id) / f"{condition}-{view}-{h}"


def run(model_id: str, dataset: str = "fashion-mnist", data_root: str | None = None, n_per_class: int = 20,
        device: str = "cpu", dtype: str = "float32", cache_dir=".cache/probekit", seed: int = 0, *,
        prompt: str = "What is in this image?", prefix: str | None = "Look closely at this image.", shift: int = 1,
        ink: int = vt.INK, min_fraction: float = vt.MIN_FRACTION, agnostic_threshold: float = 0.1,
        late_from: float = 0.5, block_fallback: int = 1, layers=None, query_template: str = "{phrase}",
        lm: LoadedModel | None = None, batch_size: int = 32) -> TokensRun:
    """Load, take the images, extract every (condition, view) store (cached), find input-agnostic keys."""
    if dataset != "fashion-mnist":
        raise ProbekitError(f"chapter 05 derives its ground truth from Fashion-MNIST's clean black background; dataset "
                            f"{dataset!r} is not supported here — use 'fashion-mnist' (data_root: its IDX folder)")
    _check("n_per_class", n_per_class, lambda v: isinstance(v, int) and v >= 2,
           "an integer of at least 2 (every class needs a training and a held-out image)")
    _check("shift", shift, lambda v: isinstance(v, int) and v >= 1, "a positive number of whole tokens")
    _check("ink", ink, lambda v: isinstance(v, int) and 0 <= v < 255, "an integer pixel value in 0..254")
    _check("min_fraction", min_fraction, lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a fraction in (0, 1]")
    _check("agnostic_threshold", agnostic_threshold, lambda v: isinstance(v, (int, float)) and v > 0,
           "a positive variance ratio")
    _check("late_from", late_from, lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a fraction of depth in [0, 1)")
    _check("block_fallback", block_fallback, lambda v: isinstance(v, int) and v >= 0, "a non-negative integer")
    _check("prefix", prefix, lambda v: v is None or (isinstance(v, str) and v.strip()), "a non-empty text or None")
    if "{phrase}" not in query_template and "{name}" not in query_template:
        raise ProbekitError(f"query_template {query_template!r} must contain {{phrase}} ('a sneaker') or {{name}} "
                            "('sneaker'): the query is the class name's last token")
    lm = lm or load(model_id, device=device, dtype=dtype)
    L = lm.num_layers
    layers = list(range(1, L + 1)) if layers is None else [int(x) for x in layers]
    size = int(model_image_size(lm.processor))
    task = class_task(size, n_per_class, seed, fashion_root=data_root)
    grid, cells = token_grid(lm, task.pil(0))
    if not 1 <= shift < grid[1]:
        raise ProbekitError(f"parameter shift={shift} must be between 1 and {grid[1] - 1}: the model's token grid has "
                            f"{grid[1]} columns")
    views = {"original": task.images, "flip": vt.flip_images(task.images),
             "shift": vt.shift_images(task.images, vt.shift_pixels(size, grid[1], shift))}
    masks = vt.foreground_masks(task.images, grid, ink=ink, min_fraction=min_fraction)
    stores, was_complete = {}, []

    def extract(condition, spec):
        for view, imgs in views.items():
            path = store_path(cache_dir, lm, task, view, condition, {**spec, "prompt": prompt, "layers": layers})
            try:
                done = ActivationStore.open(path).is_complete()
            except StoreError:
                done = False
            was_complete.append(done)
            stores[(condition, view)] = extract_image_tokens(
                lm, imgs, path, prompt=prompt, prefix=spec["prefix"], block=spec["block"], layers=layers,
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
        block = {l: np.argsort(variance[layers.index(l)], kind="stable")[:block_fallback].tolist() for l in late}
        source = "stand-in" if block else None
    if block:
        conditions["blocked"] = {"prefix": None, "block": {int(k): [int(i) for i in v] for k, v in block.items()}}
        extract("blocked", conditions["blocked"])
    texts = [query_template.format(phrase=class_phrase(c), name=c) for c in task.classes]
    queries = text_states(lm, texts)
    causality = causality_check(lm, task, prompt)
    return TokensRun(
        model_id=str(model_id), lm=lm, task=task, views=views, masks=masks, grid=grid, cells=cells, layers=layers,
        stores=stores, conditions=conditions, variance=variance, input_variance=input_variance, agnostic=agnostic, block=block or {},
        block_source=source, queries=queries, query_texts=texts, prompt=prompt, prefix=prefix, shift=shift, ink=ink,
        min_fraction=float(min_fraction), threshold=float(agnostic_threshold), late_from=float(late_from), seed=seed,
        n_per_class=int(n_per_class), image_size=size, causality=causality, from_cache=all(was_complete),
        cache_root=Path(cache_dir) / "visual_tokens" / slug(lm.model_id))


def causality_check(lm: LoadedModel, task: VisionTask, prompt: str, n: int = 8) -> dict:
    """Largest difference of the image keys / values between two prompts that differ only after the image."""
    from ...prompts import template

    imgs = [task.pil(i) for i in range(min(n, len(task)))]
    a = image_states(lm, [template(lm, prompt)] * len(imgs), imgs)
    b = image_states(lm, [template(lm, SECOND_PROMPT)] * len(imgs), imgs)
    return {"n_images": len(imgs), "prompts": [prompt, SECOND_PROMPT],
            **{k: float(max((x[k] - y[k]).abs().max() for x, y in zip(a, b))) for k in ("keys", "values")}}


# ---- measurements -------------------------------------------------------------------------------------------


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


def _features(tr: TokensRun, condition: str):
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

    _check("shots", shots, lambda v: isinstance(v, int) and v >= 1, "a positive integer")
    _check("episodes", episodes, lambda v: isinstance(v, int) and v >= 1, "a positive integer")
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
        for kind, layer in _features(tr, cond):
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


# ---- charts -------------------------------------------------------------------------------------------------


def _panel_title(task: str) -> str:
    return f"{task}: {TASKS[task][0]}"


def _kind_scale():
    import altair as alt

    return alt.Scale(domain=list(COLORS), range=list(COLORS.values()))


def perception_chart(tr: TokensRun, res: Perception, *, condition: str = "plain", cap: str | None = None,
                     title: str = "Zero-shot perception from the image tokens, per LM layer"):
    """One panel per task (its main metric): per-layer lines for values, keys and hidden states (95 % CI bands),
    the vision encoder and the projector as horizontal rules, chance dotted; the text-query panel adds the
    values scored with the other classes' queries (control)."""
    import altair as alt

    from ...book.plots import finish

    t = res.table
    xs = alt.Scale(domain=[min(tr.layers) - 0.5, max(tr.layers) + 0.5], nice=False, zero=False)
    charts = []
    for task, (metric, _) in TASKS.items():
        g = t[(t.condition == condition) & (t.task == task)]
        lines = g[(g.metric == metric) & g.kind.isin(KINDS)].copy()
        if task == "text query":
            ctrl = g[(g.metric == TASKS[task][1][0]) & (g.kind == "values")].copy()
            lines = pd.concat([lines, ctrl.assign(kind="values, other classes' queries")])
        base = g[(g.metric == metric) & g.kind.isin(BASELINES)].copy()
        col = alt.Color("kind:N", scale=_kind_scale(), title="feature", legend=alt.Legend(orient="bottom", columns=3, symbolOpacity=1))
        tooltip = ["kind:N", "layer:Q", alt.Tooltip("score:Q", format=".3f"),
                   alt.Tooltip("ci_low:Q", format=".3f", title="CI low"), alt.Tooltip("ci_high:Q", format=".3f",
                                                                                    title="CI high"), "n:Q"]
        enc = alt.Chart(lines).encode(x=alt.X("layer:Q", scale=xs, title="LM layer (decoder block)",
                                              axis=alt.Axis(values=list(tr.layers))))
        parts = [
            enc.mark_area(opacity=0.15).encode(y=alt.Y("ci_low:Q", title=metric), y2="ci_high:Q", color=col),
            enc.mark_line(point=True).encode(y="score:Q", color=col, tooltip=tooltip),
            alt.Chart(base).mark_rule(strokeWidth=2, strokeDash=[6, 3]).encode(
                y="score:Q", color=col,
                tooltip=["kind:N", alt.Tooltip("score:Q", format=".3f"), alt.Tooltip("ci_low:Q", format=".3f"),
                         alt.Tooltip("ci_high:Q", format=".3f")]),
        ]
        chance = g[g.metric == metric].chance.dropna()
        if len(chance):
            parts.append(alt.Chart(pd.DataFrame({"chance": [float(chance.iloc[0])]})).mark_rule(
                strokeDash=[1, 3], color="#777").encode(y="chance:Q", tooltip=[alt.Tooltip("chance:Q", format=".3f")]))
        charts.append(alt.layer(*parts).properties(width=250, height=170, title=_panel_title(task)))
    chart = alt.concat(*charts, columns=2).resolve_scale(color="shared")
    cap = cap or tr.caption(extra=f"condition: {condition}; segmentation {res.shots}-shot x {res.episodes} episodes on "
                                  f"{res.n_test} held-out images; 95 % bootstrap CIs over images; dashed rules: the "
                                  "vision encoder's output and the projector's at the same tokens; dotted: chance; no "
                                  "text query for the vision encoder (it has no text side)")
    return finish(chart, title, cap)


def conditions_chart(tr: TokensRun, res: Perception, *, cap: str | None = None,
                     title: str = "Image values under a text prefix and with attention blocked"):
    """Values per layer under each condition (plain, prefix, blocked), one panel per task; the vision encoder
    and the projector (which no condition changes) as grey rules."""
    import altair as alt

    from ...book.plots import finish

    t = res.table
    xs = alt.Scale(domain=[min(tr.layers) - 0.5, max(tr.layers) + 0.5], nice=False, zero=False)
    cs = alt.Scale(domain=list(tr.conditions), range=[CONDITION_COLORS[c] for c in tr.conditions])
    charts = []
    for task, (metric, _) in TASKS.items():
        g = t[(t.task == task) & (t.metric == metric)]
        lines = g[g.kind == "values"]
        base = g[g.kind.isin(BASELINES)].assign(label=lambda d: d.kind + " (every condition)")
        enc = alt.Chart(lines).encode(x=alt.X("layer:Q", scale=xs, title="LM layer (decoder block)",
                                              axis=alt.Axis(values=list(tr.layers))))
        col = alt.Color("condition:N", scale=cs, title="condition", legend=alt.Legend(orient="bottom", symbolOpacity=1))
        parts = [
            enc.mark_area(opacity=0.12).encode(y=alt.Y("ci_low:Q", title=f"{metric} (values)"), y2="ci_high:Q",
                                               color=col),
            enc.mark_line(point=True).encode(
                y="score:Q", color=col,
                tooltip=["condition:N", "layer:Q", alt.Tooltip("score:Q", format=".3f"),
                         alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f")]),
            alt.Chart(base).mark_rule(color="#888").encode(
                y="score:Q", strokeDash=alt.StrokeDash("kind:N", title="baseline",
                                                       scale=alt.Scale(domain=list(BASELINES), range=[[1, 0], [6, 3]]),
                                                       legend=alt.Legend(orient="bottom")),
                tooltip=["label:N", alt.Tooltip("score:Q", format=".3f")]),
        ]
        charts.append(alt.layer(*parts).properties(width=250, height=170, title=_panel_title(task)))
    chart = alt.concat(*charts, columns=2).resolve_scale(color="shared")
    blocked = _block_text(tr)
    cap = cap or tr.caption(extra=f"prefix: {tr.prefix!r}; blocked: {blocked}; 95 % bootstrap CIs over images; grey "
                                  "rules: vision encoder (solid) and projector (dashed)")
    return finish(chart, title, cap)


def _block_text(tr: TokensRun) -> str:
    if not tr.block:
        return "nothing (no late layer selected)"
    pairs = "; ".join(f"layer {l}: token{'s' if len(v) > 1 else ''} {', '.join(map(str, v))}" for l, v in tr.block.items())
    return pairs + (" (input-agnostic by the rule)" if tr.block_source == "rule"
                    else " (stand-ins: the lowest-variance keys of each late layer; none is input-agnostic by the rule)")


def variance_chart(tr: TokensRun, *, cap: str | None = None,
                   title: str = "How much each image key varies across images (per layer, per token position)"):
    """Small multiples, one per LM layer: the normalized cross-image variance of the key at each token of the
    grid; flagged input-agnostic keys marked ●, stand-ins ○; late layers labelled."""
    import altair as alt

    from ...book.plots import finish

    rows, cols = tr.grid
    late = set(tr.late)
    d = []
    for t, c in enumerate(tr.cells):  # the LM's input (projector output) at each token, for reference
        if c >= 0:
            d.append({"layer": "input (projector)", "order": 0, "row": int(c // cols), "col": int(c % cols),
                      "token": t, "ratio": float(tr.input_variance[t]), "mark": ""})
    for i, l in enumerate(tr.layers):
        for t, c in enumerate(tr.cells):
            if c < 0:
                continue
            mark = "●" if t in tr.agnostic.get(l, []) else ("○" if t in tr.block.get(l, []) else "")
            d.append({"layer": f"{l}{' (late)' if l in late else ''}", "order": l, "row": int(c // cols),
                      "col": int(c % cols), "token": t, "ratio": float(tr.variance[i, t]), "mark": mark})
    d = pd.DataFrame(d)
    sort = list(dict.fromkeys(d.sort_values("order").layer))
    base = alt.Chart(d).encode(x=alt.X("col:O", title=None, axis=None), y=alt.Y("row:O", title=None, axis=None))
    heat = base.mark_rect().encode(
        color=alt.Color("ratio:Q", scale=alt.Scale(scheme="viridis", domain=[0, max(1.0, float(d.ratio.max()))]),
                        title="variance across images / layer total"),
        tooltip=["layer:N", "token:Q", "row:Q", "col:Q", alt.Tooltip("ratio:Q", format=".3f")])
    text = base.mark_text(color="white", fontSize=14).encode(text="mark:N")
    side = 18 * max(rows, cols)
    chart = alt.layer(heat, text).properties(width=side * cols / max(rows, cols), height=side * rows / max(rows, cols)) \
        .facet(facet=alt.Facet("layer:N", sort=sort, title="LM layer"), columns=min(len(tr.layers) + 1, 9))
    cap = cap or tr.caption(extra=f"keys of the plain condition, original images (first panel: the same ratio for "
                                  f"the projector output, the LM's input); ● input-agnostic (ratio < {tr.threshold} in "
                                  f"a late layer, > {tr.late_from:g} of depth); ○ blocked stand-ins")
    return finish(chart, title, cap)


def masks_html(tr: TokensRun, size: int = 84) -> str:
    """One image per class beside its token mask (foreground tokens tinted) and its two transformed views."""
    import html as h

    from PIL import Image, ImageDraw

    from ...book.plots import img_tag

    rows, cols = tr.grid
    cells = []
    for c, name in enumerate(tr.task.classes):
        i = int(np.flatnonzero(tr.task.labels == c)[0])
        big = Image.fromarray(tr.task.images[i]).convert("RGB").resize((size, size), Image.Resampling.NEAREST)
        over = big.copy()
        draw = ImageDraw.Draw(over, "RGBA")
        ey, ex = vt.cell_edges(size, rows), vt.cell_edges(size, cols)
        for k, fg in enumerate(tr.masks[i]):
            r, cc = divmod(k, cols)
            box = (ex[cc], ey[r], ex[cc + 1] - 1, ey[r + 1] - 1)
            draw.rectangle(box, fill=(228, 87, 86, 110) if fg else None, outline=(120, 120, 120, 255))
        views = "".join(img_tag(Image.fromarray(tr.views[v][i]).convert("RGB"), size // 2, alt=v) for v in ("flip", "shift"))
        cells.append(f"<div style='display:inline-block;margin:0 10px 8px 0;text-align:center'>"
                     f"{img_tag(big, size, alt=name)}{img_tag(over, size, alt=name + ' mask')}<br>{views}"
                     f"<br><small>{h.escape(name)}: {int(tr.masks[i].sum())}/{len(tr.masks[i])} foreground</small></div>")
    return "<div class='probekit-samples'>" + "".join(cells) + "</div>"


# ---- tables and words --------------------------------------------------------------------------------------


def _fmt(r) -> str:
    return f"{r.score:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"


def summary_table(tr: TokensRun, res: Perception) -> pd.DataFrame:
    """Per task (main metric): the two baselines, the best layer of each kind, and the values' best layer under
    each other condition."""
    out = []
    for task, (metric, _) in TASKS.items():
        row = {"task": task, "metric": metric}
        for b in BASELINES:
            if (("plain", task, metric, b, -1)) in res.boot:
                row[b] = _fmt(res.row("plain", task, metric, b))
            else:
                row[b] = "— (no text side)"
        for k in KINDS:
            r = res.best("plain", task, k)
            row[f"best {k}"] = f"{_fmt(r)} (layer {int(r.layer)})"
        for cond in tr.conditions:
            if cond != "plain":
                r = res.best(cond, task)
                row[f"best values, {cond}"] = f"{_fmt(r)} (layer {int(r.layer)})"
        ch = res.table[(res.table.task == task) & (res.table.metric == metric)].chance.dropna()
        row["chance"] = f"{ch.iloc[0]:.3f}" if len(ch) else "—"
        out.append(row)
    return pd.DataFrame(out)


def _word(d: dict | None) -> str:
    if not d or np.isnan(d["ci"][0]):
        return "n/a"
    w = "higher" if d["ci"][0] > 0 else "lower" if d["ci"][1] < 0 else "no clear difference"
    return f"{w} ({d['diff']:+.3f}, paired 95 % CI {d['ci'][0]:+.3f} to {d['ci'][1]:+.3f})"


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


def findings_note(tr: TokensRun, res: Perception) -> str:
    """Per task, the best values layer against the two baselines (markdown, from the measured values)."""
    lines = []
    for task, x in findings(tr, res).items():
        bv = x["best_values"]
        parts = [f"- **{task}** ({x['metric']}): best values layer {bv['layer']} = {bv['score']:.3f}"]
        for base in BASELINES:
            if base in x:
                parts.append(f"vs the {base} {x[base]['score']:.3f}: {_word(x[f'values_minus_{base}'])}")
        if task == "text query":
            parts.append(f"with the other classes' queries at that layer {x['other_classes']:.3f}: the own class is "
                         f"{_word(x['true_minus_other'])}")
        lines.append("; ".join(parts) + ".")
    return "\n".join(lines)


def conditions_note(tr: TokensRun, res: Perception) -> str:
    """Per condition other than plain, the values' change per task, averaged over the layers it can change."""
    F = findings(tr, res)
    lines = []
    for c in tr.conditions:
        if c == "plain":
            continue
        what = f"the text prefix {tr.prefix!r}" if c == "prefix" else f"blocking {_block_text(tr)}"
        lay = affected_layers(tr, c)
        if not lay:
            lines.append(f"- **{c}** — {what}: no measured layer can change.")
            continue
        per = "; ".join(f"{task} {_word(x.get(f'{c}_minus_plain'))}" for task, x in F.items())
        lines.append(f"- **{c}** — {what}; values minus plain, averaged over the layers it can change "
                     f"({_span(lay)}): {per}.")
    return "\n".join(lines) or "Only the plain condition was run (no prefix, nothing to block)."


def _span(layers) -> str:
    layers = list(layers)
    if not layers:
        return "none"
    return f"{layers[0]}–{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 1 \
        else ", ".join(map(str, layers))


def agnostic_note(tr: TokensRun) -> str:
    lo = np.unravel_index(np.argmin(tr.variance), tr.variance.shape)
    late_idx = [tr.layers.index(l) for l in tr.late]
    s = (f"Lowest normalized cross-image variance of any key: {tr.variance[lo]:.3f} (layer {tr.layers[lo[0]]}, token "
         f"{lo[1]}); lowest in the late layers ({', '.join(map(str, tr.late)) or 'none'}): "
         f"{float(tr.variance[late_idx].min()) if late_idx else float('nan'):.3f}. ")
    if tr.agnostic:
        n = sum(len(v) for v in tr.agnostic.values())
        pos = sorted({t for v in tr.agnostic.values() for t in v})
        s += (f"**{n} late-layer key position(s) are input-agnostic** by the rule (ratio < {tr.threshold}): "
              + "; ".join(f"layer {l}: token{'s' if len(v) > 1 else ''} {', '.join(map(str, v))}"
                          for l, v in tr.agnostic.items())
              + ". The same ratio of the LM's *input* (the projector output) at "
              + ", ".join(f"token {t}: {tr.input_variance[t]:.3f}" for t in pos)
              + " — where the input itself hardly varies (e.g. a corner that is background in every image), a low "
                "key variance says little about the model.")
    else:
        s += (f"**No late-layer key is input-agnostic** by the rule (ratio < {tr.threshold}) on this model. The "
              "blocking experiment below therefore blocks stand-ins — the lowest-variance key of each late layer — "
              "to show what blocking does, not to test the paper's artifact claim." if tr.block else
              f"**No late-layer key is input-agnostic** by the rule (ratio < {tr.threshold}); nothing is blocked.")
    return s


def model_facts(tr: TokensRun) -> pd.DataFrame:
    lm = tr.lm
    tc = lm.text_config
    hd = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    st = tr.stores[("plain", "original")]
    facts = {"model": tr.model_id, "class": lm.identity()["architecture"],
             "decoder blocks": f"{tr.n_layers} (measured: {', '.join(map(str, tr.layers))})",
             "key / value width per token": f"{tc.num_key_value_heads} KV heads x {hd} = {tc.num_key_value_heads * hd}",
             "image tokens per image": f"{st.extra['n_image_tokens']} ({int((tr.cells >= 0).sum())} on the "
                                       f"{tr.grid[0]}x{tr.grid[1]} grid of the base view)",
             "image size (from the processor)": f"{tr.image_size} px, one grid cell = "
                                                f"{tr.image_size / tr.grid[1]:g} x {tr.image_size / tr.grid[0]:g} px",
             "vision encoder output width": str(st.quantities["vision"][-1]),
             "prompt (after the image)": tr.prompt, "text prefix (prefix condition)": repr(tr.prefix),
             "stores (one per condition and view)": str(tr.cache_root)}
    return pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]}).set_index("")


def causality_table(tr: TokensRun) -> pd.DataFrame:
    c = tr.causality
    return pd.DataFrame([{"images": c["n_images"], "prompt A (after the image)": c["prompts"][0],
                          "prompt B": c["prompts"][1], "max |Δ key|": f"{c['keys']:.1e}",
                          "max |Δ value|": f"{c['values']:.1e}"}])


# ---- the reproduction-status page ------------------------------------------------------------------------


def record_payload(tr: TokensRun, res: Perception) -> dict:
    """What chapter 05 measured, for the reproduction-status page (:func:`status_rows`)."""
    return {"model": tr.model_id, "blocks": tr.n_layers, "layers": list(tr.layers), "n_images": tr.n_images,
            "n_per_class": tr.n_per_class, "seed": tr.seed, "data": tr.data_label, "grid": list(tr.grid),
            "shots": res.shots, "episodes": res.episodes, "prefix": tr.prefix, "causality": tr.causality,
            "threshold": tr.threshold, "late_from": tr.late_from, "late_layers": tr.late,
            # lists, not dicts keyed by layer: notebooks store JSON with sorted string keys
            "agnostic": [[int(l), list(v)] for l, v in tr.agnostic.items()],
            "blocked": [[int(l), list(v)] for l, v in tr.block.items()], "block_source": tr.block_source,
            "min_late_variance": float(tr.variance[[tr.layers.index(l) for l in tr.late]].min()) if tr.late else None,
            "conditions": list(tr.conditions), "tasks": findings(tr, res)}


def status_rows(rec: dict | None) -> list[str]:
    """Markdown table rows ``| claim | reported (source) | measured here | model |`` for paper B's claims.

    Reported values come only from ``shared/reference/papers.md`` (labelled confirmed / secondary there)."""
    na = "not measured in this build"
    m = f"`{rec['model']}`" if rec else "—"
    rows = []

    def row(claim, reported, measured):
        rows.append(f"| {claim} | {reported} | {measured if rec else na} | {m} |")

    got = (rec or {}).get("tasks", {})
    T = {t: got[t] for t in TASKS if t in got}  # the record's JSON has sorted keys: restore the chapter's order

    def best(task):
        x = T.get(task)
        return f"{x['best_values']['score']:.3f} (layer {x['best_values']['layer']})" if x else "—"

    c = (rec or {}).get("causality", {})
    row("(B) Under causal attention the image tokens' keys and values do not depend on the text that follows",
        "stated (**confirmed**, the paper's rationale)",
        f"largest change of any image key / value when only the question after the image changes: "
        f"{c.get('keys', float('nan')):.1e} / {c.get('values', float('nan')):.1e} ({c.get('n_images')} images)" if rec else na)
    row("(B) Image value tokens carry enough for zero-shot segmentation, semantic correspondence, temporal "
        "correspondence and referring-expression detection",
        "stated qualitatively (**confirmed**, abstract)",
        f"best values layer — few-shot segmentation mIoU {best('segmentation')}; correspondence PCK exact, flip "
        f"{best('correspondence (flip)')}, shift {best('correspondence (shift)')}; text-query AUROC "
        f"{best('text query')}; temporal correspondence and referring expressions not measured" if rec else na)
    parts = "; ".join(f"{t}: {_word(x.get('values_minus_projector'))}" for t, x in T.items())
    row("(B) The LM augments the visual information of the projected encoder output",
        "stated qualitatively (**confirmed**, abstract)",
        f"best values layer minus the projector output: {parts}" if rec else na)
    parts = "; ".join(f"{t}: {_word(x.get('values_minus_vision encoder'))}" for t, x in T.items()
                      if x.get("values_minus_vision encoder"))
    row("(B) ... yet holds less than a SigLIP encoder without MLM finetuning on several tasks",
        "stated qualitatively (**confirmed**, abstract)",
        f"best values layer minus this model's own vision encoder (frozen, never finetuned with the LM in the "
        f"organisms' recipe; not SigLIP): {parts}" if rec else na)
    if rec:
        if rec["agnostic"]:
            found = "; ".join(f"layer {l}: tokens {', '.join(map(str, v))}" for l, v in rec["agnostic"])
            what = f"input-agnostic late-layer keys (ratio < {rec['threshold']}): {found}"
        else:
            what = (f"no input-agnostic late-layer key (ratio < {rec['threshold']}; lowest late ratio "
                    f"{rec['min_late_variance']:.3f})")
        eff = "; ".join(f"{t}: {_word(x.get('blocked_minus_plain'))}" for t, x in T.items() if x.get("blocked_minus_plain"))
        src = {"rule": "blocking them", "stand-in": "blocking stand-ins (lowest-variance late keys)"}.get(rec["block_source"])
        meas = what + (f"; {src}, values minus plain (mean over the layers blocking can change): {eff}" if src else "")
    row("(B) Input-agnostic image keys in later layers carry artifacts that reduce perception",
        "stated qualitatively (**confirmed**, abstract); found by low cross-image variance and removed by attention "
        "blocking (**secondary**)", meas if rec else na)
    eff = "; ".join(f"{t}: {_word(x.get('prefix_minus_plain'))}" for t, x in T.items() if x.get("prefix_minus_plain"))
    row("(B) A text prefix before the image improves perception", "stated qualitatively (**confirmed**, abstract)",
        (f"prefix {rec['prefix']!r}, values minus plain (mean over layers 2 and up): {eff}" if eff else "no prefix run")
        if rec else na)
    row("(B) Perception information present in the LM does not reach the output",
        "in 33.3 % of BLINK Art Style questions (**confirmed**, abstract)",
        "not run: BLINK is not part of this build" if rec else na)
    row("(B) Protocols: few-shot segmentation with a linear classifier per value token (Pascal-5i); semantic "
        "correspondence by nearest neighbours of value tokens (SPair-71K); the class name's final token as a query "
        "(ImageNet-S)", "**secondary**",
        f"same protocols on Fashion-MNIST test images with exact token masks ({rec['grid'][0]}x{rec['grid'][1]} "
        f"grid; {rec['shots']}-shot x {rec['episodes']} episodes), correspondence under a known flip / shift" if rec else na)
    row("(B) Metric values, heads", "**unknown** (not in the reference)", "see chapter 5" if rec else na)
    return rows


__all__ = ["CONDITIONS", "Perception", "RECORD_NAME", "TokensRun", "agnostic_note", "causality_table",
           "conditions_chart", "conditions_note", "findings", "findings_note", "masks_html", "measure",
           "model_facts", "perception_chart", "record_payload", "run", "status_rows", "summary_table",
           "variance_chart"]
