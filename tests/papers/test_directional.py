"""The verdict rule for signed paired differences (papers B and C) and its tally over tasks."""

import pytest

from probekit.papers import directional as D


@pytest.mark.parametrize("ci, predicted, want", [
    ([0.01, 0.2], 1, D.REPRODUCED), ([-0.2, -0.01], 1, D.NOT_REPRODUCED), ([-0.05, 0.05], 1, D.INCONCLUSIVE),
    ([-0.2, -0.01], -1, D.REPRODUCED), ([0.01, 0.2], -1, D.NOT_REPRODUCED), ([0.0, 0.2], 1, D.INCONCLUSIVE),
    (None, 1, D.NO_VERDICT), ([float("nan"), 0.1], 1, D.NO_VERDICT),
])
def test_signed(ci, predicted, want):
    assert D.signed(ci, predicted) == want


def test_signed_refuses_a_sign_that_is_not_one():
    with pytest.raises(ValueError, match="predicted"):
        D.signed([0.1, 0.2], 0)


def test_tally_needs_a_majority_to_reproduce_and_half_to_refute():
    R, N, I = D.REPRODUCED, D.NOT_REPRODUCED, D.INCONCLUSIVE
    assert D.tally({"a": R, "b": R, "c": I}) == R
    assert D.tally({"a": R, "b": I}) == I  # one of two is not more than half
    assert D.tally({"a": N, "b": I}) == N  # half refuted
    assert D.tally({"a": R, "b": N, "c": I, "d": I}) == I
    assert D.tally({"a": D.NO_VERDICT}) == D.NO_VERDICT and D.tally({}) == D.NO_VERDICT
    assert D.tally({"a": R, "b": D.NO_VERDICT}) == R  # unmeasured tasks are left out


def test_paragraph_counts_the_judged_claims_and_lists_every_row():
    rows = [{"claim": "x up", "verdict": D.REPRODUCED, "because": "d +0.1"},
            {"claim": "y down", "verdict": D.INCONCLUSIVE, "because": "d 0.0"},
            {"claim": "z", "verdict": D.NO_VERDICT, "because": "not measured"}]
    p = D.paragraph("paper B", "m", rows)
    assert "Of 2 claims measured here, 1 reproduced, 0 not reproduced, 1 inconclusive." in p
    assert "- x up: **reproduced** — d +0.1" in p and "- z: **—**" in p
    assert "[+0.100, +0.200]" in D.because({"t": {"diff": 0.1, "ci": [0.1, 0.2]}}, "a minus b")
