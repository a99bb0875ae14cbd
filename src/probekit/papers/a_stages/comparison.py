"""Chapter 4: models side by side, by absolute layer and normalized depth, with controlled pairs judged against the
noise floor of organisms that differ only in their training seed.

For every model: paper A's probes as chapter 2 fits them (on the concept's classes; the shuffled-label control, which
chapter 2 shows, is not fitted here), the interval segmentation (:mod:`.intervals`) and the per-family drops. For two
models on the same held-out images: the curve difference ``D`` = the mean, over a grid of normalized depth, of the
absolute difference of their anchor accuracy, with a paired bootstrap interval (one resample of images serves both
models; the pivotal interval, as resampling biases a mean absolute difference upwards). The **noise floor** is the
largest ``D`` between the seed replicates among the models (``probekit.organisms.SEED_REPLICATES``); a factor is
called an effect only above it (:func:`.verdicts.stability`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...stats import pivotal_interval
from . import verdicts as V
from .analysis import decision_behaviour, probe
from .intervals import segment_intervals
from .stages import STAGES, StageParams, depth_text, layer_range, normalized_depth

GRID = np.linspace(0, 1, 21)


def controlled_pairs(model_ids) -> pd.DataFrame:
    """Pairs (model, reference, factor) among ``model_ids`` known to differ in one factor.

    From the organism registry: each controlled variant against its base (seed replicates are the noise floor, not
    a pair); smol-llava-ft against smol-llava (the LM fine-tuned in stage 2, everything else equal). The base LLM has
    no clean pair: ``qwen2vl-organism`` differs from ``llava-organism`` in the decoder *and* the vision tower and
    image tokens, ``smol-llava`` in nearly everything; both are marked not controlled.
    """
    from ...organisms import ORGANISMS, recipe_confounds

    rows = []
    ids = list(model_ids)
    for m in ids:
        r = ORGANISMS.get(m)
        if r is not None and r.base in ids and r.controlled_factor != "training seed":
            extra = recipe_confounds(m, r.base)
            differs = r.summary if not extra else (
                f"{r.summary} As shipped, the two were also trained differently ("
                + ", ".join(f"{k}: {x!r} vs {y!r}" for k, (x, y) in list(extra.items())[:4])
                + (", ..." if len(extra) > 4 else "") + "): not a controlled pair until both are trained by one recipe")
            rows.append({"factor": r.controlled_factor, "model": m, "reference": r.base, "controlled": not extra,
                         "differs in": differs})
    if "smol-llava-ft" in ids and "smol-llava" in ids:
        from ...organisms.smol_llava.constants import pair_differences

        extra = pair_differences()
        schedule = {k: v for k, v in extra.items() if k in ("stage 2 lr", "stage 2 steps", "stage 2 kept step")}
        other = {k: v for k, v in extra.items() if k not in schedule}
        differs = "SmolLM2 also trained in stage 2 (LoRA) instead of frozen"
        if schedule:  # each stage 2 has its own schedule (set, or stopped and kept on dev): part of the factor, said so
            differs += (", with stage 2's schedule set for each (" + ", ".join(f"{k} {x} vs {y}" for k, (x, y) in
                                                                               schedule.items()) + ")")
        differs += "; " + ("everything else identical (stage 1, data, training bank, seed)" if not other else
                           "also: " + ", ".join(f"{k} {x!r} vs {y!r}" for k, (x, y) in other.items())
                           + ": not a controlled pair")
        rows.append({"factor": "LM fine-tuning", "model": "smol-llava-ft", "reference": "smol-llava",
                     "controlled": not other, "differs in": differs})
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
    stages: pd.DataFrame  # model, stage, first_layer, last_layer, start, end, start_norm, end_norm
    segmentations: dict   # model -> IntervalSegmentation
    pairs: pd.DataFrame   # controlled_pairs + D, its interval, noise floor, verdict
    drops: pd.DataFrame   # model, kind, unit, layer, depth, drop, band_lo, band_hi
    noise: pd.DataFrame   # seed pairs and their D
    blocks: dict
    premises: dict | None = None  # model -> (chapter 1's premise verdict, its rows: lowest Wilson lower bound first)


def _anchor(results) -> np.ndarray:
    return np.asarray(results.attrs["correct"]["anchor"], dtype=np.float64)  # [n, L+1]


def curve_difference(a: np.ndarray, b: np.ndarray, *, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """``D`` of two models' per-image anchor correctness (same images, any depths) and its paired 95 % interval
    (pivotal bootstrap over images, :func:`probekit.stats.pivotal_interval`: ``D`` is a mean absolute
    difference, which resampling biases upwards, so a percentile interval would sit above the estimate)."""
    da, db = np.linspace(0, 1, a.shape[1]), np.linspace(0, 1, b.shape[1])

    def d(x, y):
        return float(np.mean(np.abs(np.interp(GRID, da, x) - np.interp(GRID, db, y))))

    est = d(a.mean(0), b.mean(0))
    lo, hi = pivotal_interval(len(a), lambda i: d(a[i].mean(0), b[i].mean(0)), n_boot=n_boot, seed=seed + 3)
    return est, lo, hi


def compare(runs: dict, *, params: StageParams | None = None, n_boot: int = 1000, seed_replicates=None,
            **thresholds) -> Comparison:
    """Probe and segment every run (intervals); curves with normalized depth; stages per model; the seed noise
    floor; every pair's curve difference and verdict."""
    from ...organisms import SEED_REPLICATES

    params = params or StageParams(**thresholds)
    curves, stages, drops, segs, results, blocks, premises = [], [], [], {}, {}, {}, {}
    for name, r in runs.items():
        premises[name] = V.premise(decision_behaviour(r))
        res = probe(r, n_boot=n_boot, concept_only=True, control=False)  # chapter 2's probes; its control not shown
        results[name] = res
        L = r.store.n_layers
        blocks[name] = L - 1
        curves.append(res.assign(model=name, depth=normalized_depth(res.layer, L), n_layers=L - 1))
        seg = segment_intervals(res, params=params, n_boot=max(n_boot, 1000), seed=r.seed)
        segs[name] = seg
        drops.append(seg.drops.assign(model=name, depth=normalized_depth(seg.drops.layer, L)))
        b = seg.boundaries().assign(model=name, blocks=L - 1).dropna(subset=["first_layer"])
        b["start"] = b.first_layer.astype(float) - 0.5
        b["end"] = b.last_layer.astype(float) + 0.5
        b["start_norm"] = normalized_depth(b.start.clip(lower=0), L)
        b["end_norm"] = normalized_depth(b.end.clip(upper=L - 1), L)
        stages.append(b)
    seeds = [m for m in (seed_replicates or SEED_REPLICATES) if m in runs]
    noise = []
    for i, a in enumerate(seeds):
        for b in seeds[i + 1:]:
            est, lo, hi = curve_difference(_anchor(results[a]), _anchor(results[b]), n_boot=n_boot)
            noise.append({"model": a, "reference": b, "D": est, "D low": lo, "D high": hi})
    noise = pd.DataFrame(noise, columns=["model", "reference", "D", "D low", "D high"])
    floor = float(noise.D.max()) if len(noise) else None
    pairs = controlled_pairs(list(runs))
    out = []
    for _, p in pairs.iterrows():
        est, lo, hi = curve_difference(_anchor(results[p.model]), _anchor(results[p.reference]), n_boot=n_boot)
        same = _sequence(segs[p.model]) == _sequence(segs[p.reference])
        verdict, because = pair_verdict(p, est, lo, hi, floor, same, premises,
                                        starts={m: _starts(segs[m], blocks[m]) for m in (p.model, p.reference)})
        out.append({**p.to_dict(), "D": est, "D low": lo, "D high": hi, "noise floor": floor,
                    "same stage sequence": same, "verdict": verdict, "because": because})
    pairs = pd.DataFrame(out, columns=[*pairs.columns, "D", "D low", "D high", "noise floor", "same stage sequence",
                                       "verdict", "because"])
    return Comparison(curves=pd.concat(curves, ignore_index=True), stages=pd.concat(stages, ignore_index=True),
                      segmentations=segs, pairs=pairs, drops=pd.concat(drops, ignore_index=True), noise=noise,
                      blocks=blocks, premises=premises)


def pair_verdict(p, est: float, lo: float, hi: float, floor: float | None, same: bool, premises: dict,
                 starts: dict | None = None) -> tuple[str, str]:
    """One pair's verdict and the sentence it rests on (rules: :mod:`.verdicts`). ``p``: a row of
    :func:`controlled_pairs`; ``est, lo, hi``: its curve difference and interval; ``floor``: the seed noise floor;
    ``same``: whether the stage sequences agree; ``premises``: model -> :func:`~.verdicts.premise`'s result.
    A model that fails chapter 1's premise makes the pair inconclusive, before anything else is read."""
    failing = [m for m in (p.model, p.reference) if premises[m][0] == "fails"]
    if failing:
        return V.INCONCLUSIVE, (
            "; ".join(f"`{m}` fails chapter 1's premise (lowest: `{premises[m][1][0][0]}` on images showing "
                      f"{premises[m][1][0][1]}, {premises[m][1][0][2]:.1%} answered correctly)" for m in failing)
            + ": its probes describe a model that does not solve the task, so the pair cannot speak for the factor"
            f" (D = {est:.3f}, 95 % {lo:.3f}–{hi:.3f})")
    if p.factor != "base LLM" and not p.controlled:
        return V.INCONCLUSIVE, f"not a controlled pair: {p['differs in']}"
    if p.factor == "base LLM":
        starts = starts or {}
        return V.base_llm_shift(bool(p.controlled), None), (
            f"not a controlled pair ({p['differs in']}); stage starts by normalized depth — {p.model}: "
            f"{starts.get(p.model, '?')}; {p.reference}: {starts.get(p.reference, '?')}")
    return V.stability(est, lo, floor, same), (
        f"curve difference D = {est:.3f} (95 % {lo:.3f}–{hi:.3f}) against the seed noise floor "
        + (f"{floor:.3f}" if floor is not None else "(no seed replicates here)")
        + f"; {'same' if same else 'different'} stage sequence")


def _sequence(seg) -> list[str]:
    return [s for s, r in seg.ranges().items() if r is not None]


def _starts(seg, blocks: int) -> str:
    r = seg.ranges()
    return ", ".join(f"{s.split()[0]} {r[s][0] / max(blocks, 1):.2f}" for s in STAGES if r[s]) or "no stages"


def stage_boundaries_wide(comp: Comparison) -> pd.DataFrame:
    """Stage ranges per model (layers, and normalized depth in brackets)."""
    rows = []
    for m, seg in comp.segmentations.items():
        L = comp.blocks[m]
        premise = (comp.premises or {}).get(m)
        rows.append({"model": m, "blocks": L, "premise": premise[0] if premise else "—",
                     **{s: "—" if r is None else f"{layer_range(r)} ({depth_text(r, L)})"
                        for s, r in seg.ranges().items()}})
    return pd.DataFrame(rows).set_index("model")


def pair_table(comp: Comparison) -> pd.DataFrame:
    """For each pair, narrow enough for the page column: factor, the two models, whether the pair is controlled,
    the curve difference with its interval, the noise floor, whether the stage sequences agree, and the verdict."""
    cols = ["factor", "models", "controlled", "D (95 % interval)", "noise floor", "same stages", "verdict"]
    if not len(comp.pairs):
        return pd.DataFrame(columns=cols).set_index("factor")
    p = comp.pairs
    floor = p["noise floor"].map(lambda f: "—" if f is None or pd.isna(f) else f"{f:.3f}")
    out = pd.DataFrame({
        "factor": p.factor, "models": p.model + " vs " + p.reference,
        "controlled": p.controlled.map({True: "yes", False: "no"}),
        "D (95 % interval)": [f"{d:.3f} ({lo:.3f}–{hi:.3f})" for d, lo, hi in zip(p.D, p["D low"], p["D high"])],
        "noise floor": floor, "same stages": p["same stage sequence"].map({True: "yes", False: "no"}),
        "verdict": p.verdict})
    return out.set_index("factor")


__all__ = ["Comparison", "compare", "controlled_pairs", "curve_difference", "pair_table", "pair_verdict",
           "stage_boundaries_wide"]
