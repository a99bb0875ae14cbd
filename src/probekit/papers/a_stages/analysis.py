"""Paper A's analysis, from stores only: answers per prompt, per-layer probe summaries, decision probes within
and across answer formats (chapter 3), models side by side with controlled pairs (chapter 4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...probes import LayerProbes, probe_store, split_items
from ...stats import bootstrap_ci
from ...store import ActivationStore
from .stages import STAGES, StageParams, normalized_depth, segment_results


def answer_summary(store: ActivationStore) -> pd.DataFrame:
    """Per variant: share of images where the model prefers the expected answer, mean margin, top first tokens."""
    a = store.answers()
    top = a.groupby("variant", sort=False).first_token.agg(
        lambda s: ", ".join(f"{t!r}: {c}" for t, c in s.value_counts().head(3).items()))
    g = a.groupby(["variant", "family", "expected"], sort=False).agg(
        answered_correctly=("correct", "mean"), mean_margin=("margin", "mean"), n=("correct", "size")).reset_index()
    g["most frequent first tokens"] = g.variant.map(top)
    return g.round({"answered_correctly": 3, "mean_margin": 3})


def probe(run, *, test_size: float = 0.3, C: float = 1.0, n_boot: int = 1000) -> pd.DataFrame:
    """Paper A's frozen-probe protocol on the run's store (see :func:`probekit.probes.probe_store`)."""
    return probe_store(run.store, test_size=test_size, seed=run.seed, C=C, n_boot=n_boot)


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


def decision_behaviour(run) -> pd.DataFrame:
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


@dataclass
class DecisionFormat:
    curves: pd.DataFrame  # layer, series, train_format, test_format, accuracy, ci_low, ci_high, chance
    parting_layer: int | None
    table: pd.DataFrame  # per layer: within, transfer, gap, shared?
    params: StageParams


def decision_labels(run, variant) -> np.ndarray:
    """1 where the correct answer to ``variant`` is its positive answer (yes / 1), else 0."""
    shows = run.store.labels < run.data.domain_split if hasattr(run.data, "domain_split") else \
        np.ones(len(run.store.labels), bool)
    positive = variant.expected == variant.answers[0]
    return (shows == positive).astype(int)


def decision_format(run, *, test_size: float = 0.3, C: float = 1.0, n_boot: int = 1000,
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
        if r is not None and r.base in ids and r.controlled_factor != "training seed":  # seeds: the noise floor
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


def compare(runs: dict, *, params: StageParams | None = None, n_boot: int = 1000, **thresholds) -> Comparison:
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


