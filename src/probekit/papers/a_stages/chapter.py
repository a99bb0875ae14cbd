"""The experiments behind the book's chapters, as library calls (the notebooks hold narrative, parameters
and calls into these functions).

* :func:`run` — load a model and a dataset, build the prompt variants, extract (cached under ``cache_dir``:
  a second run with the same settings re-uses the activations) and return a :class:`Run`;
* :func:`decision_format` — chapter 03: decision probes within and across answer formats;
* :func:`compare` — chapter 04: several models side by side, normalized depth, controlled pairs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...book.context import ChapterRun, load, model_list, parameters_table, record, slug  # noqa: F401 (re-exported for the notebooks)
from ...data import ImageDataset, get_dataset, two_domain_dataset  # noqa: F401 (chapter 3 calls it)
from ...extract import READOUT, extract
from ...models import LoadedModel
from ...probes import LayerProbes, probe_store, split_items
from ...prompts import Variant, decision_variants, load_variants, template
from ...stats import bootstrap_ci
from ...store import ActivationStore, key_sha256
from .stages import STAGES, Segmentation, StageParams, normalized_depth, segment_results

DEFAULT_CACHE = Path(".cache") / "probekit"


@dataclass
class Run(ChapterRun):
    """One model x dataset x variant set, extracted: everything a chapter needs."""

    model_id: str
    lm: LoadedModel
    data: ImageDataset
    variants: list[Variant]
    store: ActivationStore
    seed: int
    n_per_class: int | None
    extra: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return len(self.data)

    @property
    def data_label(self) -> str:
        per = f"{self.n_per_class} per class" if self.n_per_class else "all images"
        name = re.sub(r"\[[^\]]*\]", "", self.data.name)  # drop the subsample suffix [n_per_class=..,seed=..]
        return f"{name} ({per}, {len(self.data.classes)} classes)"

    def prompts(self) -> pd.DataFrame:
        """Every variant's prompt exactly as the model sees it (chat template applied, before image expansion)."""
        return pd.DataFrame([{"variant": v.name, "family": v.family, "answers": " / ".join(v.answers),
                              "expected": v.expected, "templated prompt": template(self.lm, v.text)}
                             for v in self.variants])


def stage_record(run: "Run", results: pd.DataFrame, seg: Segmentation) -> dict:
    """What chapter 02 measured: stage ranges, the largest lexical drop inside the lexical stage, peak accuracy."""
    ranges = seg.ranges()
    lex = seg.signals.get("s_lexical")
    lr = ranges["lexical integration"]
    lex_drop = None
    if lex is not None:
        window = [i for i, l in enumerate(seg.layers) if lr and lr[0] <= l <= lr[1]] or list(range(len(seg.layers)))
        lex_drop = float(np.max(lex[window]))
    anchor = results[results.variant == "anchor"]
    return {"model": run.model_id, "blocks": int(run.lm.num_layers), "n_images": run.n_images, "seed": run.seed,
            "data": run.data_label, "stages": {k: list(v) if v else None for k, v in ranges.items()},
            "stage_sequence": [k for k, v in ranges.items() if v], "lexical_drop_max": lex_drop,
            "lexical_drop_in_stage": bool(lr), "anchor_peak": float(anchor.accuracy.max()),
            "anchor_peak_layer": int(anchor.loc[anchor.accuracy.idxmax(), "layer"]),
            "params": {"drop": seg.params.drop, "info": seg.params.info, "smooth": seg.params.smooth}}


def comparison_record(comp: "Comparison", runs: dict) -> dict:
    models = {}
    for m, seg in comp.segmentations.items():
        models[m] = {"blocks": int(runs[m].lm.num_layers), "stages": {k: list(v) if v else None
                                                                      for k, v in seg.ranges().items()}}
    first = next(iter(runs.values()))
    return {"models": models, "pairs": json.loads(pair_table(comp).to_json(orient="records")) if len(comp.pairs) else [],
            "n_images": first.n_images, "seed": first.seed, "data": first.data_label}


def model_facts(run: "Run") -> pd.DataFrame:
    """What the model is: class, decoder depth, width, dtype, where the weights came from."""
    lm = run.lm
    ident = lm.identity()
    facts = {
        "model": run.model_id,
        "class": ident["architecture"],
        "decoder blocks (L)": lm.num_layers,
        "stored states per prompt": f"{lm.num_layers + 1} (0 = embeddings, 1..L = blocks)",
        "hidden size": lm.hidden_size,
        "image tokens per image": _image_tokens(run),
        "dtype / device": f"{ident['dtype']} / {lm.device}",
        "weights sha256": (ident.get("weights_sha256") or "—")[:16] + ("..." if ident.get("weights_sha256") else ""),
    }
    return pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]}).set_index("")


def _image_tokens(run: "Run") -> int | str:
    try:
        lm = run.lm
        inputs = lm.processor(text=[template(lm, run.variants[0].text)], images=[run.data[0][0]], return_tensors="pt")
        return int((inputs["input_ids"] == lm.image_token_id).sum())
    except Exception:  # informative only
        return "?"


def dataset_facts(run: "Run") -> pd.DataFrame:
    counts = pd.Series(run.data.labels).value_counts().sort_index()
    return pd.DataFrame({"class": [run.data.classes[i] for i in counts.index], "images": counts.to_numpy()}).T \
        .rename(index={"class": "class", "images": f"images (n = {run.n_images}, seed {run.seed})"})


def prompts_html(run: "Run") -> str:
    """Every variant's templated prompt in a <pre> block, the probed (last) token marked."""
    import html as h

    parts = []
    for v in run.variants:
        t = template(run.lm, v.text)
        toks = run.lm.tokenizer.tokenize(t)
        last = toks[-1] if toks else ""
        parts.append(
            f"<p><b>{h.escape(v.name)}</b> <small>({h.escape(v.family)}; answers {h.escape(' / '.join(v.answers))}, "
            f"expected <code>{h.escape(v.expected)}</code>; probed token: <code>{h.escape(repr(last))}</code>)</small></p>"
            f"<pre style='white-space:pre-wrap'>{h.escape(t)}</pre>")
    return "\n".join(parts)


def behaviour_note(run: "Run") -> str:
    """One paragraph: how often the model answers correctly per family, and what that means for the analysis."""
    s = answer_summary(run.store)
    worst = s.sort_values("answered_correctly").iloc[0]
    anchor = s[s.family == "anchor"].answered_correctly.mean()
    lines = [f"The model prefers the expected answer on **{anchor:.1%}** of the images under the anchor question."]
    if worst.answered_correctly < 0.75:
        lines.append(f"It answers worst under `{worst.variant}` ({worst.answered_correctly:.1%}): read the probe "
                     "results for that variant with care — the probes then describe a model that does not "
                     "solve the task as posed.")
    else:
        lines.append(f"Every variant is answered correctly on at least {worst.answered_correctly:.1%} of the images, so "
                     "the probes below describe a model that solves the task.")
    return " ".join(lines)


def store_dir(cache_dir, lm: LoadedModel, data: ImageDataset, variants, position: str = "last") -> Path:
    """The cache directory of one extraction: ``cache_dir/<model slug>/<hash of what changes the numbers>``."""
    key = {"model": lm.identity(), "data": data.identity(), "variants": [v.to_dict() for v in variants],
           "position": position, "readout": READOUT}
    h = key_sha256(key, 16)
    return Path(cache_dir) / slug(lm.model_id) / h


def variant_spec(variants) -> dict | str:
    """``variants`` parameter -> a spec for :func:`load_variants` ('paper-a', a YAML path, or a dict)."""
    if variants is None:
        return "paper-a"
    return variants


def run(model_id: str, dataset: str = "fashion-mnist", data_root: str | None = None, n_per_class: int | None = 50,
        variants="paper-a", device: str = "cpu", dtype: str = "float32", cache_dir=DEFAULT_CACHE, seed: int = 0,
        *, lm: LoadedModel | None = None, data: ImageDataset | None = None, batch_size: int = 16,
        progress: bool = False, families=None) -> Run:
    """Load, extract (cached) and return a :class:`Run`."""
    lm = lm or load(model_id, device, dtype)
    data = data if data is not None else get_dataset(dataset, data_root, n_per_class=n_per_class, seed=seed)
    if isinstance(variants, (list, tuple)) and variants and all(isinstance(v, Variant) for v in variants):
        vs = list(variants)
    else:
        if isinstance(variants, (list, tuple)):  # a list of paper A's families to keep
            variants, families = "paper-a", list(variants)
        vs = load_variants(variant_spec(variants), concept=data.concept, negation=data.negation, families=families)
    out = store_dir(cache_dir, lm, data, vs)
    store = extract(lm, data, vs, out, batch_size=batch_size, progress=progress)
    return Run(model_id=str(model_id), lm=lm, data=data, variants=vs, store=store, seed=seed, n_per_class=n_per_class)


def sample_grid(data: ImageDataset, per_class: int = 4, seed: int = 0) -> pd.DataFrame:
    """A few images per class as rows (class, index, PIL image) for display."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, name in enumerate(data.classes):
        idx = np.flatnonzero(data.labels == c)
        for i in rng.choice(idx, min(per_class, len(idx)), replace=False) if len(idx) else []:
            rows.append({"class": name, "index": int(i), "image": data[int(i)][0]})
    return pd.DataFrame(rows)


def image_grid_html(data: ImageDataset, per_class: int = 4, seed: int = 0, size: int = 56) -> str:
    """Sample images per class as an HTML table with inline PNGs (renders in the book without a kernel)."""
    import html

    from ...book.plots import img_tag

    grid = sample_grid(data, per_class, seed)
    rows = []
    for name, g in grid.groupby("class", sort=False):
        cells = [img_tag(im, size, alt=name) for im in g.image]
        rows.append(f"<tr><th style='text-align:right;padding-right:8px'>{html.escape(name)}</th>"
                    f"<td>{''.join(cells)}</td></tr>")
    return "<table class='probekit-samples'>" + "".join(rows) + "</table>"


def answer_summary(store: ActivationStore) -> pd.DataFrame:
    """Per variant: share of images where the model prefers the expected answer, mean margin, top first tokens."""
    a = store.answers()
    top = a.groupby("variant", sort=False).first_token.agg(
        lambda s: ", ".join(f"{t!r}: {c}" for t, c in s.value_counts().head(3).items()))
    g = a.groupby(["variant", "family", "expected"], sort=False).agg(
        answered_correctly=("correct", "mean"), mean_margin=("margin", "mean"), n=("correct", "size")).reset_index()
    g["most frequent first tokens"] = g.variant.map(top)
    return g.round({"answered_correctly": 3, "mean_margin": 3})


def probe(run: Run, *, test_size: float = 0.3, C: float = 1.0, n_boot: int = 1000) -> pd.DataFrame:
    """Paper A's frozen-probe protocol on the run's store (see :func:`probekit.probes.probe_store`)."""
    return probe_store(run.store, test_size=test_size, seed=run.seed, C=C, n_boot=n_boot)


def stage_table(seg: Segmentation) -> pd.DataFrame:
    """The boundary table shown in the book: stage, first and last layer, number of layers."""
    return seg.boundaries()


def best_layers(results: pd.DataFrame) -> pd.DataFrame:
    """Per variant: peak accuracy, its layer, final-layer accuracy, and the mean drop below the anchor."""
    anchor = results[results.variant == "anchor"].set_index("layer").accuracy
    rows = []
    for v, g in results.groupby("variant", sort=False):
        g = g.set_index("layer")
        rows.append({"variant": v, "family": g.family.iloc[0], "peak accuracy": round(float(g.accuracy.max()), 3),
                     "peak layer": int(g.accuracy.idxmax()), "last-layer accuracy": round(float(g.accuracy.iloc[-1]), 3),
                     "mean drop vs anchor": round(float((anchor - g.accuracy).mean()), 3)})
    return pd.DataFrame(rows)


# ---- chapter 03: decision vs output format ---------------------------------------------------------------

FORMAT_FAMILIES = {"yes/no": ("anchor", "negation"), "1/0": ("one_zero", "negation_one_zero")}


def decision_behaviour(run: Run) -> pd.DataFrame:
    """Share of images answered correctly per prompt and image domain (correct answer depends on both)."""
    a = run.store.answers()
    vmap = {v.name: v for v in run.variants}
    k = getattr(run.data, "domain_split", len(run.data.classes))
    a["image shows"] = np.where(a.label < k, run.data.concept, run.data.negation)
    # margin = logprob(expected) - logprob(other); the correct answer flips for images of the other domain
    shows = a.label < k
    a["correct"] = np.where(shows, a.margin > 0, a.margin < 0)
    a["correct answer"] = [vmap[v].expected if sh else next(x for x in vmap[v].answers if x != vmap[v].expected)
                           for v, sh in zip(a.variant, shows)]
    return (a.groupby(["variant", "image shows", "correct answer"], sort=False)
            .agg(answered_correctly=("correct", "mean"), n=("correct", "size")).round(3).reset_index())


def parting_note(df: "DecisionFormat") -> str:
    t = df.table
    shared = t[t["decision shared across formats"]].layer.tolist()
    p = df.parting_layer
    s = (f"The decision is decodable in both formats and transfers between them at layer(s) "
         f"{_ranges(shared)}." if shared else "No layer holds a decision that transfers between the formats "
         f"within {df.params.drop:.2f} accuracy.")
    specific = t[t["format-specific"]].layer.tolist()
    if specific:
        s += f" The decision is format-specific (transfer at least {df.params.drop:.2f} below within-format) at " \
             f"layer(s) {_ranges(specific)}."
    if p is None:
        s += (" No parting layer: the decision " + ("never transfers between the formats." if not shared else
              "stays shared after it first transfers."))
    else:
        s += (f" **The formats part at layer {p}**: the first layer after the shared decision where a probe "
              f"trained on one format falls at least {df.params.drop:.2f} below the within-format probe on the other.")
    return s


def _ranges(layers) -> str:
    layers = sorted(int(x) for x in layers)
    out, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        out.append(f"{layers[i]}" if i == j else f"{layers[i]}–{layers[j]}")
        i = j + 1
    return ", ".join(out)


@dataclass
class DecisionFormat:
    curves: pd.DataFrame  # layer, series, train_format, test_format, accuracy, ci_low, ci_high, chance
    parting_layer: int | None
    table: pd.DataFrame  # per layer: within, transfer, gap, shared?
    params: StageParams


def decision_labels(run: Run, variant: Variant) -> np.ndarray:
    """1 where the correct answer to ``variant`` is its positive answer (yes / 1), else 0."""
    shows = run.store.labels < run.data.domain_split if hasattr(run.data, "domain_split") else \
        np.ones(len(run.store.labels), bool)
    positive = variant.expected == variant.answers[0]
    return (shows == positive).astype(int)


def decision_format(run: Run, *, test_size: float = 0.3, C: float = 1.0, n_boot: int = 1000,
                    params: StageParams | None = None, **thresholds) -> DecisionFormat:
    """Decision probes (is the correct answer the positive one?) trained per layer on the prompts of one
    answer format and scored on held-out images in the same and in the other format.

    A layer holds a *shared* decision when it is decodable within the formats and across them (accuracy at
    least ``info`` above chance) with a gap below ``drop`` (gap = mean within-format accuracy minus mean
    transfer accuracy); it is *format-specific* when decodable within the formats with a gap of at least
    ``drop``. The parting layer is the first format-specific layer after the first shared layer (confirmed by
    the next layer unless it is the last). Without a shared layer there is no parting layer: the decision
    never transfers.
    """
    params = params or StageParams(**thresholds)
    store = run.store
    vmap = {v.name: v for v in store.variants}
    tr, te = split_items(store.labels, test_size=test_size, seed=run.seed)

    def xy(fmt, idx):
        X = np.concatenate([store.features(v)[idx] for v in FORMAT_FAMILIES[fmt]])
        y = np.concatenate([decision_labels(run, vmap[v])[idx] for v in FORMAT_FAMILIES[fmt]])
        return X, y

    rows = []
    for train_fmt in FORMAT_FAMILIES:
        Xtr, ytr = xy(train_fmt, tr)
        probes = LayerProbes(C=C, seed=run.seed).fit(Xtr, ytr)
        for test_fmt in FORMAT_FAMILIES:
            Xte, yte = xy(test_fmt, te)
            acc, lo, hi = bootstrap_ci(probes.predict(Xte) == yte[:, None], n_boot=n_boot, seed=run.seed)
            for layer in range(len(acc)):
                rows.append({"layer": layer, "series": f"{train_fmt} → {test_fmt}", "train_format": train_fmt,
                             "test_format": test_fmt, "kind": "within" if train_fmt == test_fmt else "transfer",
                             "accuracy": acc[layer], "ci_low": lo[layer], "ci_high": hi[layer],
                             "chance": float(max(np.mean(yte), 1 - np.mean(yte))), "n_test": len(yte)})
    curves = pd.DataFrame(rows)
    piv = curves.groupby(["layer", "kind"]).accuracy.mean().unstack("kind")
    chance = float(curves.chance.max())
    table = pd.DataFrame({"layer": piv.index, "within": piv["within"].round(3), "transfer": piv["transfer"].round(3)})
    table["gap"] = (table.within - table.transfer).round(3)
    informative = table.within - chance >= params.info
    parted = informative & (table.gap >= params.drop)
    table["decision shared across formats"] = informative & (table.gap < params.drop) & (
        table.transfer - chance >= params.info)
    table["format-specific"] = parted
    parting = None
    p, sh = parted.to_numpy(), table["decision shared across formats"].to_numpy()
    if sh.any():
        for i in range(int(np.argmax(sh)) + 1, len(p)):
            if p[i] and (i == len(p) - 1 or p[i + 1]):
                parting = int(table.layer.iloc[i])
                break
    return DecisionFormat(curves=curves, parting_layer=parting, table=table.reset_index(drop=True), params=params)


# ---- chapter 04: models side by side ---------------------------------------------------------------------


def controlled_pairs(model_ids) -> pd.DataFrame:
    """Pairs (model, reference, factor) among ``model_ids`` known to differ in one factor of paper A.

    From the organism registry: each controlled variant against its base. The base LLM has no clean pair
    among the organisms: ``qwen2vl-organism`` differs from ``llava-organism`` in the decoder (Qwen2, 6
    blocks vs Llama, 8) *and* in the vision tower and image tokens, so that row is marked not controlled.
    """
    from ...organisms import ORGANISMS

    rows = []
    ids = list(model_ids)
    for m in ids:
        r = ORGANISMS.get(m)
        if r is not None and r.base in ids:
            rows.append({"factor": r.controlled_factor, "model": m, "reference": r.base, "controlled": True,
                         "differs in": r.summary})
    if "qwen2vl-organism" in ids and "llava-organism" in ids:
        rows.append({"factor": "base LLM", "model": "qwen2vl-organism", "reference": "llava-organism",
                     "controlled": False, "differs in": "decoder (Qwen2, 6 blocks vs Llama, 8 blocks) and also the "
                     "vision tower, projector and number of image tokens"})
    if "smol-llava" in ids and "llava-organism" in ids:
        rows.append({"factor": "base LLM", "model": "smol-llava", "reference": "llava-organism", "controlled": False,
                     "differs in": "decoder (SmolLM2-135M-Instruct, pretrained on web-scale text, 30 blocks, width 576 "
                     "vs a from-scratch 8-block Llama) and also the vision encoder (DINOv2-S at 56 px), the tokenizer, "
                     "the chat template and the training (projector only)"})
    return pd.DataFrame(rows, columns=["factor", "model", "reference", "controlled", "differs in"])


@dataclass
class Comparison:
    curves: pd.DataFrame  # model, layer, depth, variant, family, accuracy, ...
    stages: pd.DataFrame  # model, stage, first_layer, last_layer, n_layers, start, end, start_norm, end_norm
    segmentations: dict
    pairs: pd.DataFrame


def compare(runs: dict[str, Run], *, params: StageParams | None = None, n_boot: int = 1000, **thresholds) -> Comparison:
    """Probe and segment every run; curves with normalized depth; stages per model; controlled pairs."""
    params = params or StageParams(**thresholds)
    curves, stages, segs = [], [], {}
    for name, r in runs.items():
        res = probe(r, n_boot=n_boot)
        L = r.store.n_layers
        curves.append(res.assign(model=name, depth=normalized_depth(res.layer, L), n_layers=L - 1))
        seg = segment_results(res, params=params)
        segs[name] = seg
        b = seg.boundaries().assign(model=name, blocks=L - 1)
        b = b.dropna(subset=["first_layer"])
        b["start"] = b.first_layer.astype(float) - 0.5
        b["end"] = b.last_layer.astype(float) + 0.5
        b["start_norm"] = normalized_depth(b.start.clip(lower=0), L)
        b["end_norm"] = normalized_depth(b.end.clip(upper=L - 1), L)
        stages.append(b)
    pairs = controlled_pairs(list(runs))
    return Comparison(curves=pd.concat(curves, ignore_index=True), stages=pd.concat(stages, ignore_index=True),
                      segmentations=segs, pairs=pairs)


def model_table(runs: dict[str, Run]) -> pd.DataFrame:
    """One row per model: class, decoder blocks, hidden size, images."""
    return pd.DataFrame([{"model": m, "class": r.lm.identity()["architecture"], "decoder blocks": r.lm.num_layers,
                          "hidden size": r.lm.hidden_size, "images": r.n_images} for m, r in runs.items()])


def stage_boundaries_wide(comp: Comparison) -> pd.DataFrame:
    """Stage ranges per model (layers, and normalized depth in brackets)."""
    rows = []
    for m, seg in comp.segmentations.items():
        L = len(seg.layers) - 1
        row = {"model": m, "blocks": L}
        for s, r in seg.ranges().items():
            row[s] = "—" if r is None else f"{r[0]}–{r[1]} ({r[0] / L:.2f}–{r[1] / L:.2f})"
        rows.append(row)
    return pd.DataFrame(rows)


def pair_charts(comp: Comparison, *, seed: int, data_label: str, n: int):
    """One normalized-depth chart per controlled pair (anchor and every variant of both models)."""
    from ...book.plots import caption
    from .charts import depth_chart

    out = []
    for _, p in comp.pairs.iterrows():
        d = comp.curves[comp.curves.model.isin([p.model, p.reference]) & (comp.curves.variant == "anchor")]
        cap = caption(model=f"{p.model} vs {p.reference}", data=data_label, n=f"{n} images per model", seed=seed,
                      extra=f"factor: {p.factor}{'' if p.controlled else ' (not a controlled pair)'}")
        out.append(depth_chart(d, cap=cap, normalized=True, title=f"{p.factor}: {p.model} vs {p.reference}"))
    return out


def comparison_note(comp: Comparison) -> str:
    if comp.pairs.empty:
        return ("None of these models is a controlled variant of another, so this page compares them side by side "
                "only; pass the organism family (the default `model_ids`) for the controlled comparisons.")
    t = pair_table(comp)
    parts = []
    for _, r in t.iterrows():
        same = "the same stage sequence" if r["same stage sequence"] else "a different stage sequence"
        parts.append(f"- **{r.factor}** (`{r.model}` vs `{r.reference}`{'' if r.controlled else ', not controlled'}): "
                     f"{same}; anchor curves differ by {r['mean |Δ accuracy| (anchor, by depth)']:.3f} accuracy on "
                     "average over normalized depth.")
    return "Measured on these models:\n\n" + "\n".join(parts)


def pair_table(comp: Comparison) -> pd.DataFrame:
    """For each controlled pair: both models' stage ranges (layers and normalized depth), whether the
    stage sequence is the same, and the mean absolute difference of the anchor curves over normalized depth."""
    rows = []
    for _, p in comp.pairs.iterrows():
        m, ref = p.model, p.reference
        sm, sr = comp.segmentations[m].ranges(), comp.segmentations[ref].ranges()
        seq = lambda s: [k for k in STAGES if s[k] is not None]  # noqa: E731
        cm = comp.curves[(comp.curves.model == m) & (comp.curves.variant == "anchor")]
        cr = comp.curves[(comp.curves.model == ref) & (comp.curves.variant == "anchor")]
        grid = np.linspace(0, 1, 21)
        diff = float(np.mean(np.abs(np.interp(grid, cm.depth, cm.accuracy) - np.interp(grid, cr.depth, cr.accuracy))))
        fmt = lambda r: "—" if r is None else f"{r[0]}–{r[1]}"  # noqa: E731
        row = {"factor": p.factor, "model": m, "reference": ref, "controlled": p.controlled,
               "same stage sequence": seq(sm) == seq(sr), "mean |Δ accuracy| (anchor, by depth)": round(diff, 3)}
        for s in STAGES:
            row[f"{s}: model / reference"] = f"{fmt(sm[s])} / {fmt(sr[s])}"
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["Comparison", "DecisionFormat", "Run", "answer_summary", "best_layers", "compare", "controlled_pairs",
           "decision_format", "decision_variants", "image_grid_html", "pair_table", "probe", "run", "stage_table",
           "store_dir", "two_domain_dataset"]
