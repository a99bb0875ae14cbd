"""Four-stage segmentation of per-layer probe-accuracy curves (paper A, arXiv 2508.20279).

Paper A reads four stages off the layer-wise accuracy of frozen class probes under its prompt variants
(``shared/reference/papers.md``: the stage names are confirmed, the layer ranges secondary):

1. **visual grounding** — the probed (last) token already carries the image's class, and the prompt
   wording does not matter yet: the anchor probe reads every variant about as well as the anchor;
2. **lexical integration** — the class information is bound to the words of the prompt: a purely
   lexical change ("image" -> "picture") breaks the anchor-trained probe;
3. **semantic reasoning** — lexical changes no longer matter, but a change of meaning does (semantic
   negation "a fashion item" -> "a handwritten digit" flips the expected answer);
4. **answer decoding** — the representation is shaped by the output: changing only the answer format
   ("yes or no" -> "1 or 0") breaks the probe.

The rule, in two steps (thresholds are parameters, defaults below):

* **Per-layer signatures.** With ``a(l)`` the anchor's held-out accuracy at layer ``l`` and ``a_f(l)`` the
  mean accuracy of variant family ``f`` (the anchor-trained probe, frozen, scored on that family's prompts),
  the *sensitivity* of layer ``l`` to ``f`` is the drop ``s_f(l) = a(l) - a_f(l)``. A layer is
  *informative* when ``a(l) - max(chance, control(l)) >= info`` (``control`` = the shuffled-label probe),
  and *sensitive to f* when ``s_f(l) >= drop``. The signature of each stage:

  =====================  ======================================================================
  stage                  a layer fits it when
  =====================  ======================================================================
  (before grounding)     not informative
  visual grounding       informative and sensitive to no family
  lexical integration    sensitive to the lexical family
  semantic reasoning     sensitive to semantic negation, not to the lexical family, not to the
                         output format
  answer decoding        sensitive to the output format, not to the lexical family
  =====================  ======================================================================

  The signatures are exclusive (a layer fits at most one stage), so a layer's evidence is never shared
  between two stages: a layer where wording still matters is lexical whatever else breaks the probe, and
  a layer where the format breaks the probe is decoding even if negation breaks it too (the answer flips).

* **Ordered segmentation.** The stages are contiguous and appear in this order (any may be empty). The
  boundaries are the ones that make the most layers fit their stage's signature (exhaustive search over
  ordered boundaries: dynamic programming, ``O(stages x layers^2)``). Ties go to the earliest boundaries.

A family missing from the curves (e.g. no lexical variants) makes its stage empty. Layers are numbered as
in the store: 0 = embedding output, ``l`` = output of decoder block ``l`` (paper A numbers blocks 1..L).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

STAGES = ("visual grounding", "lexical integration", "semantic reasoning", "answer decoding")
PRE_STAGE = "before grounding"
FAMILY_OF_STAGE = {"lexical integration": "lexical", "semantic reasoning": "semantic_negation",
                   "answer decoding": "output_format"}
DEFAULT_DROP = 0.10
DEFAULT_INFO = 0.10


@dataclass(frozen=True)
class StageParams:
    """Thresholds of the segmentation rule (accuracy units, 0..1).

    ``drop``: an accuracy drop of a variant family below the anchor at least this large makes the layer
    *sensitive* to that family (default 0.10 = ten points). ``info``: anchor accuracy at least this far
    above ``max(chance, shuffled control)`` makes the layer *informative* (default 0.10). ``smooth``: width
    of a centred moving average applied to every curve first (1 = none).
    """

    drop: float = DEFAULT_DROP
    info: float = DEFAULT_INFO
    smooth: int = 1

    def __post_init__(self):
        if not 0 < self.drop <= 1 or not 0 <= self.info <= 1:
            raise ValueError(f"thresholds must be accuracies in (0, 1]: drop={self.drop}, info={self.info}")
        if int(self.smooth) != self.smooth or self.smooth < 1:
            raise ValueError(f"smooth must be a positive integer window, got {self.smooth}")


@dataclass
class Segmentation:
    """Result of :func:`segment`: one stage label per layer and the stage boundaries."""

    layers: np.ndarray
    labels: list[str]
    params: StageParams
    signals: dict[str, np.ndarray] = field(default_factory=dict)

    def boundaries(self) -> "pandas.DataFrame":  # noqa: F821
        """One row per stage (in order): ``stage, first_layer, last_layer, n_layers`` (NaN when empty)."""
        import pandas as pd

        rows = []
        for s in (PRE_STAGE, *STAGES):
            ls = [int(l) for l, lab in zip(self.layers, self.labels) if lab == s]
            if s == PRE_STAGE and not ls:
                continue
            rows.append({"stage": s, "first_layer": ls[0] if ls else None, "last_layer": ls[-1] if ls else None,
                         "n_layers": len(ls)})
        df = pd.DataFrame(rows)
        for c in ("first_layer", "last_layer"):
            df[c] = df[c].astype("Int64")
        return df

    def ranges(self) -> dict[str, tuple[int, int] | None]:
        """``{stage: (first, last) or None}`` for the four stages."""
        b = self.boundaries().set_index("stage")
        return {s: (None if pd_isna(b.loc[s, "first_layer"]) else (int(b.loc[s, "first_layer"]),
                                                                    int(b.loc[s, "last_layer"])))
                for s in STAGES}

    def bands(self) -> "pandas.DataFrame":  # noqa: F821
        """Non-empty stages as ``stage, start, end`` (end exclusive by half a layer), for charts."""
        df = self.boundaries().dropna(subset=["first_layer"])
        return df.assign(start=df.first_layer.astype(float) - 0.5, end=df.last_layer.astype(float) + 0.5)[
            ["stage", "start", "end", "first_layer", "last_layer"]]


def pd_isna(x) -> bool:
    import pandas as pd

    return bool(pd.isna(x))


def _smooth(x: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(x) < 2:
        return x
    pad = k // 2
    xp = np.pad(x, (pad, k - 1 - pad), mode="edge")
    return np.convolve(xp, np.ones(k) / k, mode="valid")


def signatures(anchor: np.ndarray, families: Mapping[str, np.ndarray], *, chance: float,
               control: np.ndarray | None = None, params: StageParams = StageParams()) -> dict[str, np.ndarray]:
    """Per-layer boolean signatures (see the module doc) and the sensitivity curves ``s_<family>``."""
    a = _smooth(np.asarray(anchor, float), params.smooth)
    floor = np.full_like(a, chance) if control is None else np.maximum(chance, _smooth(np.asarray(control, float),
                                                                                       params.smooth))
    out = {"informative": a - floor >= params.info}
    sens = {}
    for fam in ("lexical", "semantic_negation", "output_format"):
        if fam in families:
            s = a - _smooth(np.asarray(families[fam], float), params.smooth)
            out[f"s_{fam}"] = s
            sens[fam] = s >= params.drop
        else:
            sens[fam] = np.zeros(len(a), bool)
    any_sens = sens["lexical"] | sens["semantic_negation"] | sens["output_format"]
    out[PRE_STAGE] = ~out["informative"]
    out["visual grounding"] = out["informative"] & ~any_sens
    out["lexical integration"] = sens["lexical"]
    out["semantic reasoning"] = sens["semantic_negation"] & ~sens["lexical"] & ~sens["output_format"]
    out["answer decoding"] = sens["output_format"] & ~sens["lexical"]
    return out


def ordered_segments(fit: np.ndarray) -> list[int]:
    """fit: [K stages, n layers] of 0/1. Returns the stage index per layer (non-decreasing) maximising the
    number of fitting layers; ties -> earliest boundaries (smallest stage index first)."""
    K, n = fit.shape
    # best[k][i] = best score for layers [0, i) using stages 0..k, with stage k possibly empty
    cum = np.concatenate([np.zeros((K, 1)), np.cumsum(fit, axis=1)], axis=1)  # [K, n+1]
    best = np.full((K, n + 1), -np.inf)
    arg = np.zeros((K, n + 1), int)
    best[0] = cum[0]
    for k in range(1, K):
        for i in range(n + 1):
            # stage k covers layers [j, i) and stages 0..k-1 cover [0, j); on ties the smallest j wins
            cand = best[k - 1, : i + 1] + (cum[k, i] - cum[k, : i + 1])
            j = int(np.argmax(cand))  # first maximum = smallest j
            best[k, i], arg[k, i] = cand[j], j
    labels = np.zeros(n, int)
    i = n
    for k in range(K - 1, 0, -1):
        j = arg[k, i]
        labels[j:i] = k
        i = j
    labels[:i] = 0
    return labels.tolist()


def segment(anchor, families: Mapping[str, np.ndarray], *, chance: float, control=None,
            layers=None, params: StageParams | None = None, **thresholds) -> Segmentation:
    """Segment the layers into paper A's four stages from accuracy curves.

    ``anchor``: anchor accuracy per layer; ``families``: mean accuracy per layer of each variant family
    (keys ``lexical``, ``semantic_negation``, ``output_format``; others are ignored); ``chance``: chance
    accuracy; ``control``: shuffled-label control accuracy per layer (optional). Thresholds: pass
    ``params=StageParams(...)`` or ``drop=``, ``info=``, ``smooth=`` directly.
    """
    params = params or StageParams(**thresholds)
    anchor = np.asarray(anchor, float)
    n = len(anchor)
    if n == 0:
        raise ValueError("no layers to segment")
    for k, v in families.items():
        if len(v) != n:
            raise ValueError(f"family {k!r} has {len(v)} layers, the anchor {n}")
    layers = np.arange(n) if layers is None else np.asarray(layers)
    sig = signatures(anchor, families, chance=chance, control=control, params=params)
    order = (PRE_STAGE, *STAGES)
    fit = np.stack([sig[s].astype(float) for s in order])
    idx = ordered_segments(fit)
    return Segmentation(layers=layers, labels=[order[i] for i in idx], params=params, signals=sig)


def segment_results(df, *, params: StageParams | None = None, **thresholds) -> Segmentation:
    """Segment a :func:`probekit.probes.probe_store` result (one row per layer x variant).

    Family curves are the mean accuracy of the family's variants per layer; the control is the anchor's
    shuffled-label accuracy.
    """
    anchor = df[df.family == "anchor"].sort_values("layer")
    if anchor.empty:
        raise ValueError("the results have no anchor rows; segment needs the anchor's accuracy curve")
    fam = (df[df.family != "anchor"].groupby(["family", "layer"]).accuracy.mean().unstack("layer")
           .reindex(columns=anchor.layer.values))
    families = {f: fam.loc[f].to_numpy() for f in fam.index}
    control = anchor.control_accuracy.to_numpy() if anchor.control_accuracy.notna().all() else None
    return segment(anchor.accuracy.to_numpy(), families, chance=float(anchor.chance.iloc[0]), control=control,
                   layers=anchor.layer.to_numpy(), params=params, **thresholds)


def normalized_depth(layer, n_layers: int) -> np.ndarray:
    """Depth in [0, 1]: layer / L, with L the number of decoder blocks (``n_layers`` stored states - 1)."""
    L = max(int(n_layers) - 1, 1)
    return np.asarray(layer, float) / L


def layer_range(r) -> str:
    """A stage's ``(first, last)`` layers as text: ``"3"``, ``"3–7"``, or ``"—"`` for no layers (whole numbers even
    when they arrive as floats from a column with missing values)."""
    if not r:
        return "—"
    first, last = int(r[0]), int(r[1])
    return f"{first}" if first == last else f"{first}–{last}"


def depth_text(r, blocks: int) -> str:
    """The same range as normalized depth (layer / ``blocks``): ``"0.03"`` or ``"0.07–1.00"``."""
    a, b = r[0] / blocks, r[1] / blocks
    return f"{a:.2f}" if r[0] == r[1] else f"{a:.2f}–{b:.2f}"


__all__ = ["DEFAULT_DROP", "DEFAULT_INFO", "PRE_STAGE", "STAGES", "Segmentation", "StageParams", "depth_text",
           "layer_range", "normalized_depth", "segment", "segment_results", "signatures"]
