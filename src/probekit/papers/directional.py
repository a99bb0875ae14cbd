"""The verdict rule for claims that predict the sign of a paired difference (papers B and C), and its tally over
tasks. The vocabulary and the rule are those of the methods page, as for paper A (:mod:`.a_stages.verdicts`):

- one task: the claim predicts ``difference > 0`` (or ``< 0``). **Reproduced** when the paired 95 % interval over
  images lies entirely on the predicted side of zero; **not reproduced** when it lies entirely on the other side;
  **inconclusive** when it contains zero (no clear difference at this n);
- a claim over several tasks: reproduced when it is reproduced on more than half of the tasks measured; not
  reproduced when it is not reproduced on at least half; inconclusive otherwise;
- a claim with nothing measured gets no verdict ("—").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
NO_VERDICT = "—"


def signed(ci: Sequence[float] | None, predicted: int = 1) -> str:
    """One paired difference's 95 % interval ``ci`` against the predicted sign (``+1`` or ``-1``)."""
    if predicted not in (1, -1):
        raise ValueError(f"predicted must be +1 or -1, got {predicted!r}")
    if ci is None or len(ci) != 2 or any(x is None or np.isnan(x) for x in ci):
        return NO_VERDICT
    lo, hi = (float(ci[0]), float(ci[1])) if predicted > 0 else (-float(ci[1]), -float(ci[0]))
    if lo > 0:
        return REPRODUCED
    if hi < 0:
        return NOT_REPRODUCED
    return INCONCLUSIVE


def tally(verdicts: Mapping[str, str]) -> str:
    """Several tasks' verdicts -> the claim's (module doc); tasks without a verdict are left out."""
    got = [v for v in verdicts.values() if v != NO_VERDICT]
    if not got:
        return NO_VERDICT
    if sum(v == REPRODUCED for v in got) * 2 > len(got):
        return REPRODUCED
    if sum(v == NOT_REPRODUCED for v in got) * 2 >= len(got):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def because(diffs: Mapping[str, Mapping | None], what: str) -> str:
    """The numbers a tallied verdict rests on: per task its difference and paired interval."""
    parts = [f"{t} {d['diff']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" for t, d in diffs.items()
             if d and not np.isnan(d["ci"][0])]
    return f"{what} (paired 95 % CI over images): " + ("; ".join(parts) if parts else "not measured")


def paragraph(title: str, model: str, rows: Sequence[Mapping]) -> str:
    """A chapter's closing verdicts in plain words (generated from ``rows``: claim, verdict, because)."""
    judged = [r for r in rows if r["verdict"] != NO_VERDICT]
    counts = {v: sum(r["verdict"] == v for r in judged) for v in (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE)}
    head = (f"**Verdicts on `{model}`** ({title}; rule: methods page). Of {len(judged)} claims measured here, "
            f"{counts[REPRODUCED]} reproduced, {counts[NOT_REPRODUCED]} not reproduced, {counts[INCONCLUSIVE]} "
            "inconclusive.")
    lines = [f"- {r['claim']}: **{r['verdict']}** — {r['because']}" for r in rows]
    return head + "\n\n" + "\n".join(lines)


__all__ = ["INCONCLUSIVE", "NOT_REPRODUCED", "NO_VERDICT", "REPRODUCED", "because", "paragraph", "signed", "tally"]
