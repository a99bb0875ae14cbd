"""Paper A's per-layer evidence with intervals: paired drops below the anchor, stage signatures that hold only when
the intervals clear the thresholds, the bootstrap distribution of the stage boundaries, and a threshold sweep.

Everything is computed from a :func:`probekit.probes.probe_store` result, whose ``attrs["correct"]`` holds every
held-out image's correctness per layer and variant (the same images for every variant and for the shuffled-label
control). Resampling is over those **images**, never over prompts: a drop is the per-image difference
"anchor right - variant right" averaged over images, and one resample of images serves every layer, variant and
family at once, so the differences stay paired.

Multiple comparisons. A layer is called *sensitive* to a family only when the drop's **simultaneous** band (a
max-|t| bootstrap band, :func:`probekit.stats.simultaneous_band`, over all layers x families together at level
``1 - alpha``) lies at or above the threshold ``drop``; *not sensitive* only when the band lies below it. A layer is
*informative* when the simultaneous band over layers of "anchor accuracy - max(chance, shuffled control)" lies at
or above ``info``. Between the two ends a layer's status is undecided.

Each stage's signature (the rule of :mod:`.stages`) is then evaluated twice:

- **certain**: every condition of the signature is established by the bands (sensitive / not sensitive /
  informative as above);
- **possible**: no condition is contradicted by them (each could hold given the band).

The stages are segmented (ordered, as in :mod:`.stages`) on the *certain* signatures; the verdict rules of the
claims (:mod:`.claims`) read both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...stats import bootstrap_indices, simultaneous_band
from .stages import FAMILY_OF_STAGE, PRE_STAGE, STAGES, StageParams, layer_range, ordered_segments, segment

FAMILIES = ("lexical", "semantic_negation", "output_format")


def _per_image(results) -> tuple[dict[str, np.ndarray], dict[str, str], np.ndarray | None, float]:
    correct = results.attrs.get("correct")
    if not correct:
        raise ValueError("these results hold no per-image correctness (results.attrs['correct']); probe the store "
                         "with probekit.probes.probe_store")
    fam = results.drop_duplicates("variant").set_index("variant").family.to_dict()
    ctrl = (results.attrs.get("control_correct") or {}).get("anchor")
    return ({v: np.asarray(c, dtype=np.float64) for v, c in correct.items()}, fam,
            None if ctrl is None else np.asarray(ctrl, dtype=np.float64), float(results.chance.iloc[0]))


def unit_scores(results) -> dict[tuple[str, str], np.ndarray]:
    """Per-image scores ``[n, L+1]`` of every family (the mean over its variants, per image) and every variant."""
    correct, fam, _, _ = _per_image(results)
    units = {}
    for f in FAMILIES:
        vs = [v for v, ff in fam.items() if ff == f and v in correct]
        if vs:
            units[("family", f)] = np.mean([correct[v] for v in vs], axis=0)
    for v, f in fam.items():
        if f != "anchor" and v in correct:
            units[("variant", v)] = correct[v]
    return units


def drop_table(results, *, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Per layer and family (and, separately, per variant): the drop below the anchor, its pointwise 95 %
    interval, and its simultaneous band (families: over layers x families together; variants: over layers x
    variants together). Columns ``kind, unit, layer, drop, lo, hi, band_lo, band_hi, n_test``."""
    correct, _, _, _ = _per_image(results)
    anchor = correct["anchor"]
    n, L = anchor.shape
    idx = bootstrap_indices(n, n_boot, seed)
    rows = []
    units = unit_scores(results)
    for kind in ("family", "variant"):
        names = [u for k, u in units if k == kind]
        if not names:
            continue
        d = np.concatenate([anchor - units[(kind, u)] for u in names], axis=1)  # [n, K*L]
        est, boots = d.mean(0), d[idx].mean(1)
        lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2], axis=0)
        blo, bhi, _ = simultaneous_band(est, boots, alpha=alpha)
        for k, u in enumerate(names):
            for layer in range(L):
                j = k * L + layer
                rows.append({"kind": kind, "unit": u, "layer": layer, "drop": est[j], "lo": lo[j], "hi": hi[j],
                             "band_lo": blo[j], "band_hi": bhi[j], "n_test": n})
    return pd.DataFrame(rows)


def informative_band(results, *, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """Per layer: anchor accuracy minus max(chance, shuffled-label control), with a simultaneous band over layers
    (paired per image with the control). Columns ``layer, margin, band_lo, band_hi``."""
    correct, _, ctrl, chance = _per_image(results)
    anchor = correct["anchor"]
    n, L = anchor.shape
    idx = bootstrap_indices(n, n_boot, seed + 7)
    floor = np.full_like(anchor, chance) if ctrl is None else ctrl
    est_a, est_f = anchor.mean(0), floor.mean(0)
    boots = anchor[idx].mean(1) - np.maximum(chance, floor[idx].mean(1))
    est = est_a - np.maximum(chance, est_f)
    lo, hi, _ = simultaneous_band(est, boots, alpha=alpha)
    return pd.DataFrame({"layer": np.arange(L), "margin": est, "band_lo": lo, "band_hi": hi})


@dataclass
class IntervalSegmentation:
    """Stages from interval evidence: ``labels`` per layer (ordered segmentation of the *certain* signatures),
    ``certain`` / ``possible`` boolean arrays per stage, and the tables they came from."""

    layers: np.ndarray
    labels: list[str]
    certain: dict[str, np.ndarray]
    possible: dict[str, np.ndarray]
    drops: pd.DataFrame
    informative: pd.DataFrame
    params: StageParams
    alpha: float

    def ranges(self) -> dict[str, tuple[int, int] | None]:
        out = {}
        for s in STAGES:
            ls = [int(l) for l, lab in zip(self.layers, self.labels) if lab == s]
            out[s] = (ls[0], ls[-1]) if ls else None
        return out

    def boundaries(self) -> pd.DataFrame:
        """One row per stage: first and last layer of the segmentation, layers whose signature is certain / possible."""
        rows = []
        for s in STAGES:
            r = self.ranges()[s]
            rows.append({"stage": s, "first_layer": r[0] if r else None, "last_layer": r[1] if r else None,
                         "layers certain": int(self.certain[s].sum()), "layers possible": int(self.possible[s].sum())})
        df = pd.DataFrame(rows)
        for c in ("first_layer", "last_layer"):
            df[c] = df[c].astype("Int64")
        return df

    def bands(self) -> pd.DataFrame:
        """Non-empty stages as ``stage, start, end`` (half a layer either side), for charts."""
        b = self.boundaries().dropna(subset=["first_layer"])
        return b.assign(start=b.first_layer.astype(float) - 0.5, end=b.last_layer.astype(float) + 0.5)[
            ["stage", "start", "end", "first_layer", "last_layer"]]


def _status(drops: pd.DataFrame, threshold: float, L: int) -> tuple[dict, dict]:
    """Per family: layers certainly sensitive (band >= threshold) and possibly sensitive (band reaches it)."""
    fam = drops[drops.kind == "family"]
    sure, maybe = {}, {}
    for f in FAMILIES:
        d = fam[fam.unit == f].sort_values("layer")
        if d.empty:
            sure[f] = maybe[f] = np.zeros(L, bool)
            sure[f + "_not"] = np.ones(L, bool)
            continue
        sure[f] = d.band_lo.to_numpy() >= threshold
        maybe[f] = d.band_hi.to_numpy() >= threshold
        sure[f + "_not"] = d.band_hi.to_numpy() < threshold
    return sure, maybe


def interval_signatures(drops: pd.DataFrame, informative: pd.DataFrame, params: StageParams):
    """The stage signatures of :mod:`.stages`, *certain* and *possible* per layer, from the bands."""
    L = len(informative)
    sure, maybe = _status(drops, params.drop, L)
    inf_sure = informative.band_lo.to_numpy() >= params.info
    inf_maybe = informative.band_hi.to_numpy() >= params.info
    no = {f: sure[f + "_not"] for f in FAMILIES}   # certainly not sensitive
    can_no = {f: ~sure[f] for f in FAMILIES}       # possibly not sensitive
    certain = {
        PRE_STAGE: informative.band_hi.to_numpy() < params.info,
        "visual grounding": inf_sure & no["lexical"] & no["semantic_negation"] & no["output_format"],
        "lexical integration": sure["lexical"],
        "semantic reasoning": sure["semantic_negation"] & no["lexical"] & no["output_format"],
        "answer decoding": sure["output_format"] & no["lexical"],
    }
    possible = {
        PRE_STAGE: ~inf_sure,
        "visual grounding": inf_maybe & can_no["lexical"] & can_no["semantic_negation"] & can_no["output_format"],
        "lexical integration": maybe["lexical"],
        "semantic reasoning": maybe["semantic_negation"] & can_no["lexical"] & can_no["output_format"],
        "answer decoding": maybe["output_format"] & can_no["lexical"],
    }
    return certain, possible


def segment_intervals(results, *, params: StageParams | None = None, n_boot: int = 2000, seed: int = 0,
                      alpha: float = 0.05, **thresholds) -> IntervalSegmentation:
    """Ordered stage segmentation on the *certain* signatures (module doc); thresholds as :class:`StageParams`."""
    params = params or StageParams(**thresholds)
    drops = drop_table(results, n_boot=n_boot, seed=seed, alpha=alpha)
    inf = informative_band(results, n_boot=n_boot, seed=seed, alpha=alpha)
    certain, possible = interval_signatures(drops, inf, params)
    order = (PRE_STAGE, *STAGES)
    idx = ordered_segments(np.stack([certain[s].astype(float) for s in order]))
    return IntervalSegmentation(layers=inf.layer.to_numpy(), labels=[order[i] for i in idx], certain=certain,
                                possible=possible, drops=drops, informative=inf, params=params, alpha=alpha)


def stage_bootstrap(results, *, params: StageParams | None = None, n_boot: int = 200, seed: int = 0,
                    **thresholds) -> pd.DataFrame:
    """How often each layer gets each stage when the held-out images are resampled (the point-estimate rule of
    :func:`.stages.segment` on every resample; the probes stay fixed, so this is the test images' noise).
    Columns ``layer, stage, share``."""
    params = params or StageParams(**thresholds)
    correct, fam, ctrl, chance = _per_image(results)
    n, L = correct["anchor"].shape
    idx = bootstrap_indices(n, n_boot, seed + 11)
    counts = {s: np.zeros(L) for s in (PRE_STAGE, *STAGES)}
    fams = {f: [v for v, ff in fam.items() if ff == f and v in correct] for f in FAMILIES}
    for b in range(n_boot):
        i = idx[b]
        anchor = correct["anchor"][i].mean(0)
        curves = {f: np.mean([correct[v][i].mean(0) for v in vs], axis=0) for f, vs in fams.items() if vs}
        seg = segment(anchor, curves, chance=chance, control=None if ctrl is None else ctrl[i].mean(0), params=params)
        for layer, lab in enumerate(seg.labels):
            counts[lab][layer] += 1
    return pd.DataFrame([{"layer": layer, "stage": s, "share": counts[s][layer] / n_boot}
                         for s in counts for layer in range(L)])


def threshold_sweep(results, *, drops=(0.05, 0.10, 0.15, 0.20), infos=(0.05, 0.10, 0.20), n_boot: int = 2000,
                    seed: int = 0, alpha: float = 0.05) -> pd.DataFrame:
    """The interval segmentation under every combination of thresholds: ``drop, info, stage, first_layer,
    last_layer, layers certain``."""
    rows = []
    for d in drops:
        for i in infos:
            seg = segment_intervals(results, params=StageParams(drop=d, info=i), n_boot=n_boot, seed=seed, alpha=alpha)
            for _, r in seg.boundaries().iterrows():
                rows.append({"drop": d, "info": i, **r.to_dict()})
    return pd.DataFrame(rows)


def sweep_summary(sweep: pd.DataFrame) -> pd.DataFrame:
    """One row per threshold setting, one column per stage: its layers (``first–last``) or ``—``."""
    rows = []
    for (d, i), g in sweep.groupby(["drop", "info"], sort=True):
        row = {"drop": d, "info": i}
        for r in g.itertuples():
            row[r.stage] = "—" if pd.isna(r.first_layer) else layer_range((r.first_layer, r.last_layer))
        rows.append(row)
    return pd.DataFrame(rows)


def stage_of_family(stage: str) -> str | None:
    """The variant family whose drop defines ``stage`` (None for visual grounding)."""
    return FAMILY_OF_STAGE.get(stage)


__all__ = ["FAMILIES", "IntervalSegmentation", "drop_table", "informative_band", "interval_signatures",
           "segment_intervals", "stage_bootstrap", "stage_of_family", "sweep_summary", "threshold_sweep", "unit_scores"]
