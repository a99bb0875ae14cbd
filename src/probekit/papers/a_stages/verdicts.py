"""Verdicts on paper A's claims, generated from the numbers by the rule of the methods page.

The rule, for every claim: a claim predicts a pattern. It is **reproduced** when the pattern holds with the
intervals excluding its absence; **not reproduced** when the intervals exclude the pattern; **inconclusive**
otherwise. The intervals are simultaneous bands over images (:mod:`.intervals`); what "the pattern" means for each
claim is written beside it here and on the methods page:

- *stage S is present*: some layer has S's signature. Reproduced: some layer's signature is certain; not
  reproduced: no layer's signature is possible.
- *stage S sits where paper A puts it* (early / middle / final, by normalized depth ``l / L``: grounding in
  ``[0, 1/3]``, lexical integration in ``[1/6, 2/3]``, semantic reasoning in ``[1/3, 5/6]``, answer decoding in
  ``[1/2, 1]``): reproduced: S is present and every layer where its signature is certain lies in the region; not
  reproduced: no layer where it is possible lies there.
- *the stages come in paper A's order*: reproduced: all four are present and the median layers of their certain
  signatures increase in paper A's order; not reproduced: a stage is not present (the four stages did not
  appear), or two present stages are certainly reversed (every certain layer of the later stage lies before every
  certain layer of the earlier one).
- *the lexical variants drop accuracy by about 40 %* (secondary; whether relative or absolute is not known, read
  as 0.30 accuracy or more): reproduced: some layer's lexical drop has its band at or above 0.30; not reproduced:
  every layer's band lies below 0.30.
- *the decision is shared across answer formats, then the formats part*: reproduced: a layer whose decision is
  certainly shared (decodable, transfer gap's band below ``drop``) precedes a layer where the formats certainly
  part (gap's band at or above ``drop``); not reproduced: no layer possibly parts, or no layer is possibly shared.
- *the stages are stable across a factor* (tokenizer, instruction data, pretraining corpus; a controlled pair):
  reproduced: the pair's curve difference is no larger than that between organisms that differ only in their
  training seed (the noise floor) and their stage sequences agree; not reproduced: the difference's interval lies
  above the noise floor; without seed replicates there is no noise floor and the verdict is inconclusive.
- *the layer allocation shifts with the base LLM*: needs a controlled pair (two models that differ only in the base
  LLM); without one, inconclusive, whatever the numbers.
- *the premise* (chapter 1; no claim of paper A, what every claim needs): the model solves the task its probes
  decode. Per probe prompt and image domain, the Wilson 95 % interval of the share answered correctly: it holds
  when every lower bound is at least :data:`PREMISE`, fails when some upper bound is below it, and is uncertain
  otherwise. A pair (chapter 4) one of whose models fails it is judged inconclusive whatever its curves: their
  probes describe a model that does not solve the task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from .stages import STAGES

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
VERDICTS = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)
REGIONS = {"visual grounding": (0.0, 1 / 3), "lexical integration": (1 / 6, 2 / 3),
           "semantic reasoning": (1 / 3, 5 / 6), "answer decoding": (0.5, 1.0)}
LEXICAL_DROP = 0.30


def _layers(mask, layers) -> list[int]:
    return [int(l) for l, m in zip(layers, mask) if m]


def presence(certain: Mapping[str, np.ndarray], possible: Mapping[str, np.ndarray], stage: str) -> str:
    """Stage ``stage`` is present: some certain layer (reproduced) / no possible layer (not reproduced)."""
    if np.any(certain[stage]):
        return REPRODUCED
    return NOT_REPRODUCED if not np.any(possible[stage]) else INCONCLUSIVE


def position(certain, possible, stage: str, layers: Sequence[int], blocks: int) -> str:
    """Stage ``stage`` lies in its region of normalized depth (:data:`REGIONS`)."""
    lo, hi = REGIONS[stage]
    depth = lambda ls: [l / max(blocks, 1) for l in ls]  # noqa: E731
    sure = depth(_layers(certain[stage], layers))
    maybe = depth(_layers(possible[stage], layers))
    if sure and all(lo <= d <= hi for d in sure):
        return REPRODUCED
    if not any(lo <= d <= hi for d in maybe):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def order(certain, possible, layers: Sequence[int]) -> str:
    """The four stages appear in paper A's order (module doc)."""
    present = {s: presence(certain, possible, s) for s in STAGES}
    sure = {s: _layers(certain[s], layers) for s in STAGES}
    for i, a in enumerate(STAGES):
        for b in STAGES[i + 1:]:
            if sure[a] and sure[b] and max(sure[b]) < min(sure[a]):
                return NOT_REPRODUCED
    if NOT_REPRODUCED in present.values():
        return NOT_REPRODUCED
    if all(v == REPRODUCED for v in present.values()):
        med = [float(np.median(sure[s])) for s in STAGES]
        return REPRODUCED if all(x < y for x, y in zip(med, med[1:])) else INCONCLUSIVE
    return INCONCLUSIVE


def lexical_drop(band_lo: np.ndarray, band_hi: np.ndarray, threshold: float = LEXICAL_DROP) -> str:
    """A lexical drop of at least ``threshold`` at some layer (bands of the lexical family's drop per layer)."""
    if np.any(np.asarray(band_lo) >= threshold):
        return REPRODUCED
    return NOT_REPRODUCED if np.all(np.asarray(band_hi) < threshold) else INCONCLUSIVE


def parting(shared_certain: np.ndarray, shared_possible: np.ndarray, parted_certain: np.ndarray,
            parted_possible: np.ndarray) -> str:
    """A certainly shared decision precedes a layer where the formats certainly part (module doc)."""
    sc, pc = np.flatnonzero(shared_certain), np.flatnonzero(parted_certain)
    if len(sc) and len(pc) and pc.max() > sc.min():
        return REPRODUCED
    if not np.any(parted_possible) or not np.any(shared_possible):
        return NOT_REPRODUCED
    return INCONCLUSIVE


PREMISE = 0.90  # the share of images a probe prompt must be answered correctly on, for the premise to hold


def premise(table) -> tuple[str, list[tuple]]:
    """The premise rule (module doc) on a :func:`~.analysis.decision_behaviour` table: ``'holds'``, ``'fails'`` or
    ``'uncertain'``, and the rows ``(variant, image shows, share, n, low, high)`` with the lowest lower bound
    first (Wilson 95 % intervals)."""
    from ...stats import wilson_interval

    rows = []
    for _, r in table.iterrows():
        n = int(r.n)
        rows.append((r.variant, r["image shows"], float(r.answered_correctly), n,
                     *wilson_interval(round(r.answered_correctly * n), n)))
    rows.sort(key=lambda x: x[4])
    if all(x[4] >= PREMISE for x in rows):
        return "holds", rows
    if any(x[5] < PREMISE for x in rows):
        return "fails", rows
    return "uncertain", rows


def stability(difference: float, difference_lo: float, noise_floor: float | None, same_sequence: bool) -> str:
    """A controlled pair's curve difference against the seed noise floor (module doc)."""
    if noise_floor is None:
        return INCONCLUSIVE
    if difference_lo > noise_floor:
        return NOT_REPRODUCED
    if difference <= noise_floor and same_sequence:
        return REPRODUCED
    return INCONCLUSIVE


def base_llm_shift(controlled: bool, shifted: bool | None) -> str:
    """Paper A's base-LLM claim: only a controlled pair can decide it."""
    if not controlled or shifted is None:
        return INCONCLUSIVE
    return REPRODUCED if shifted else NOT_REPRODUCED


def sentence(claim: str, verdict: str, because: str) -> str:
    """One plain sentence: the claim, the verdict in bold, and the numbers it rests on."""
    return f"- {claim}: **{verdict}** — {because}"


__all__ = ["INCONCLUSIVE", "LEXICAL_DROP", "NOT_REPRODUCED", "PREMISE", "REGIONS", "REPRODUCED", "VERDICTS",
           "base_llm_shift", "lexical_drop", "order", "parting", "position", "premise", "presence", "sentence",
           "stability"]
