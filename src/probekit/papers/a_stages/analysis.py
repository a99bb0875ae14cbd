"""Paper A's analysis, from stores only: answers per prompt, per-layer probe summaries, decision probes within
and across answer formats (chapter 3), models side by side with controlled pairs (chapter 4)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...probes import LayerProbes, probe_store, split_items
from ...stats import bootstrap_ci, bootstrap_indices, simultaneous_band
from ...store import ActivationStore
from .stages import StageParams


def answer_summary(store: ActivationStore) -> pd.DataFrame:
    """Per variant: share of images where the model prefers the expected answer, mean margin, top first tokens."""
    a = store.answers()
    top = a.groupby("variant", sort=False).first_token.agg(
        lambda s: ", ".join(f"{t!r}: {c}" for t, c in s.value_counts().head(3).items()))
    g = a.groupby(["variant", "family", "expected"], sort=False).agg(
        answered_correctly=("correct", "mean"), mean_margin=("margin", "mean"), n=("correct", "size")).reset_index()
    g["most frequent first tokens"] = g.variant.map(top)
    return g.round({"answered_correctly": 3, "mean_margin": 3})


def probe(run, *, test_size: float = 0.3, C: float = 1.0, n_boot: int = 2000, variants=None,
          concept_only: bool = False, control: bool = True) -> pd.DataFrame:
    """Paper A's frozen-probe protocol on the run's store (see :func:`probekit.probes.probe_store`).
    ``concept_only``: the images of the concept's domain only (labels below ``run.data.domain_split``), as paper A
    probes the classes of its concept; ``variants``: score only these; ``control``: also fit the shuffled-label
    control probe (the slower of the two fits)."""
    items = None
    if concept_only and hasattr(run.data, "domain_split"):
        items = np.flatnonzero(run.store.labels < run.data.domain_split)
    return probe_store(run.store, test_size=test_size, seed=run.seed, C=C, n_boot=n_boot, variants=variants,
                       items=items, control=control)


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
    curves: pd.DataFrame  # layer, series, train_format, test_format, kind, accuracy, ci_low, ci_high, chance, n_test
    parting_layer: int | None
    table: pd.DataFrame  # per layer: within, transfer, gap (+ bands), shared / format-specific (certain, possible)
    params: StageParams
    parting_share: pd.DataFrame | None = None  # parting layer over bootstrap resamples of the held-out images
    n_images: int = 0


def decision_labels(run, variant) -> np.ndarray:
    """1 where the correct answer to ``variant`` is its positive answer (yes / 1), else 0."""
    shows = run.store.labels < run.data.domain_split if hasattr(run.data, "domain_split") else \
        np.ones(len(run.store.labels), bool)
    positive = variant.expected == variant.answers[0]
    return (shows == positive).astype(int)


def _first_parting(shared: np.ndarray, parted: np.ndarray, layers) -> int | None:
    """The first parted layer after the first shared one, confirmed by the next layer unless it is the last."""
    if not shared.any():
        return None
    for i in range(int(np.argmax(shared)) + 1, len(parted)):
        if parted[i] and (i == len(parted) - 1 or parted[i + 1]):
            return int(layers[i])
    return None


def decision_format(run, *, test_size: float = 0.3, C: float = 1.0, n_boot: int = 2000, alpha: float = 0.05,
                    params: StageParams | None = None, **thresholds) -> DecisionFormat:
    """Decision probes (is the correct answer the positive one?) trained per layer on the prompts of one answer
    format and scored on held-out **images** in the same and in the other format.

    Per held-out image and layer: *within* = the share of its four prompts (two per format) the within-format probes
    get right, *transfer* = the share of its four prompts the other format's probe gets right, *gap* = within -
    transfer. Intervals resample the images (not the prompts; each image's prompts move together), as simultaneous
    bands over the layers (:func:`probekit.stats.simultaneous_band`). A layer's decision is *certainly shared* when
    within and transfer are decodable (bands at least ``info`` above chance) and the gap's band lies below ``drop``;
    the formats *certainly part* at a decodable layer whose gap band lies at or above ``drop``; *possibly* when the
    bands allow it. The parting layer is the first certainly parted layer after the first certainly shared one
    (confirmed by the next layer unless it is the last); its bootstrap distribution uses the point estimates.
    """
    params = params or StageParams(**thresholds)
    store = run.store
    vmap = {v.name: v for v in store.variants}
    tr, te = split_items(store.labels, test_size=test_size, seed=run.seed)

    def xy(fmt, idx):
        X = np.concatenate([store.features(v)[idx] for v in FORMAT_FAMILIES[fmt]])
        y = np.concatenate([decision_labels(run, vmap[v])[idx] for v in FORMAT_FAMILIES[fmt]])
        return X, y

    n = len(te)
    rows, per_image = [], {}
    for train_fmt in FORMAT_FAMILIES:
        Xtr, ytr = xy(train_fmt, tr)
        probes = LayerProbes(C=C, seed=run.seed).fit(Xtr, ytr)
        for test_fmt in FORMAT_FAMILIES:
            Xte, yte = xy(test_fmt, te)
            right = (probes.predict(Xte) == yte[:, None]).astype(float)  # [2 n, L]: the format's two prompts
            img = right.reshape(2, n, -1).mean(0)  # per image: share of its two prompts right
            per_image[(train_fmt, test_fmt)] = img
            acc, lo, hi = bootstrap_ci(img, n_boot=n_boot, seed=run.seed)
            for layer in range(len(acc)):
                rows.append({"layer": layer, "series": f"{train_fmt} → {test_fmt}", "train_format": train_fmt,
                             "test_format": test_fmt, "kind": "within" if train_fmt == test_fmt else "transfer",
                             "accuracy": acc[layer], "ci_low": lo[layer], "ci_high": hi[layer],
                             "chance": float(max(np.mean(yte), 1 - np.mean(yte))), "n_test": n})
    curves = pd.DataFrame(rows)
    fmts = list(FORMAT_FAMILIES)
    within = np.mean([per_image[(f, f)] for f in fmts], axis=0)  # [n, L]
    transfer = np.mean([per_image[(f, g)] for f in fmts for g in fmts if f != g], axis=0)
    chance = float(curves.chance.max())
    idx = bootstrap_indices(n, n_boot, run.seed + 5)
    est = np.concatenate([within.mean(0), transfer.mean(0), (within - transfer).mean(0)])
    boots = np.concatenate([within[idx].mean(1), transfer[idx].mean(1), (within - transfer)[idx].mean(1)], axis=1)
    blo, bhi, _ = simultaneous_band(est, boots, alpha=alpha)
    L = within.shape[1]
    w_lo, w_hi, t_lo, t_hi, g_lo, g_hi = blo[:L], bhi[:L], blo[L:2 * L], bhi[L:2 * L], blo[2 * L:], bhi[2 * L:]
    layers = np.arange(L)
    dec_sure = (w_lo - chance >= params.info) & (t_lo - chance >= params.info)
    dec_maybe = (w_hi - chance >= params.info) & (t_hi - chance >= params.info)
    w_sure, w_maybe = w_lo - chance >= params.info, w_hi - chance >= params.info
    table = pd.DataFrame({"layer": layers, "within": est[:L].round(3), "transfer": est[L:2 * L].round(3),
                          "gap": est[2 * L:].round(3), "gap band low": g_lo.round(3), "gap band high": g_hi.round(3),
                          "shared (certain)": dec_sure & (g_hi < params.drop),
                          "shared (possible)": dec_maybe & (g_lo < params.drop),
                          "formats part (certain)": w_sure & (g_lo >= params.drop),
                          "formats part (possible)": w_maybe & (g_hi >= params.drop)})
    parting = _first_parting(table["shared (certain)"].to_numpy(), table["formats part (certain)"].to_numpy(), layers)
    counts: dict = {}
    for b in range(min(n_boot, 500)):
        i = idx[b]
        w, t = within[i].mean(0), transfer[i].mean(0)
        sh = (w - chance >= params.info) & (t - chance >= params.info) & (w - t < params.drop)
        pa = (w - chance >= params.info) & (w - t >= params.drop)
        key = _first_parting(sh, pa, layers)
        counts[key] = counts.get(key, 0) + 1
    total = sum(counts.values())
    share = pd.DataFrame([{"parting layer": "none" if k is None else int(k), "share": c / total}
                          for k, c in sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))])
    return DecisionFormat(curves=curves, parting_layer=parting, table=table, params=params, parting_share=share,
                          n_images=n)
