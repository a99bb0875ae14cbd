"""The verdict rules: each of the three words where the rule says it, on hand-made evidence."""

import numpy as np

from probekit.papers.a_stages import verdicts as V
from probekit.papers.a_stages.stages import STAGES

LAYERS = list(range(9))


def masks(**on):
    return {s: np.array([l in on.get(s, ()) for l in LAYERS]) for s in STAGES}


def test_presence_and_position():
    certain = masks(**{"visual grounding": (1, 2), "answer decoding": (7, 8)})
    possible = masks(**{"visual grounding": (1, 2, 3), "lexical integration": (4,), "answer decoding": (6, 7, 8)})
    assert V.presence(certain, possible, "visual grounding") == V.REPRODUCED
    assert V.presence(certain, possible, "lexical integration") == V.INCONCLUSIVE
    assert V.presence(certain, possible, "semantic reasoning") == V.NOT_REPRODUCED
    assert V.position(certain, possible, "visual grounding", LAYERS, 8) == V.REPRODUCED  # depth 0.12-0.25
    assert V.position(certain, possible, "answer decoding", LAYERS, 8) == V.REPRODUCED
    late = masks(**{"visual grounding": (7, 8)})
    assert V.position(late, late, "visual grounding", LAYERS, 8) == V.NOT_REPRODUCED


def test_order_needs_all_four_in_order_and_is_refuted_by_an_absent_stage_or_a_reversal():
    good = masks(**{"visual grounding": (1,), "lexical integration": (2, 3), "semantic reasoning": (5,),
                    "answer decoding": (7, 8)})
    assert V.order(good, good, LAYERS) == V.REPRODUCED
    missing = masks(**{"visual grounding": (1,), "answer decoding": (7, 8)})
    assert V.order(missing, missing, LAYERS) == V.NOT_REPRODUCED  # two stages cannot be there at all
    maybe = masks(**{"visual grounding": (1,), "answer decoding": (7, 8)})
    possible = masks(**{"visual grounding": (1,), "lexical integration": (3,), "semantic reasoning": (5,),
                        "answer decoding": (7, 8)})
    assert V.order(maybe, possible, LAYERS) == V.INCONCLUSIVE
    rev = masks(**{"visual grounding": (7,), "lexical integration": (2,), "semantic reasoning": (5,),
                   "answer decoding": (8,)})
    assert V.order(rev, rev, LAYERS) == V.NOT_REPRODUCED


def test_lexical_parting_stability_and_base_llm():
    assert V.lexical_drop(np.array([0.1, 0.32]), np.array([0.2, 0.5])) == V.REPRODUCED
    assert V.lexical_drop(np.array([0.1, 0.2]), np.array([0.2, 0.29])) == V.NOT_REPRODUCED
    assert V.lexical_drop(np.array([0.1, 0.2]), np.array([0.2, 0.35])) == V.INCONCLUSIVE
    sh, pa = np.array([0, 1, 1, 0, 0]), np.array([0, 0, 0, 1, 1])
    assert V.parting(sh, sh, pa, pa) == V.REPRODUCED
    assert V.parting(sh, sh, np.zeros(5), np.zeros(5)) == V.NOT_REPRODUCED
    assert V.parting(np.zeros(5), sh, np.zeros(5), pa) == V.INCONCLUSIVE
    assert V.stability(0.02, 0.01, 0.03, True) == V.REPRODUCED
    assert V.stability(0.09, 0.06, 0.03, True) == V.NOT_REPRODUCED
    assert V.stability(0.02, 0.01, None, True) == V.INCONCLUSIVE
    assert V.stability(0.02, 0.01, 0.03, False) == V.INCONCLUSIVE
    assert V.base_llm_shift(False, True) == V.INCONCLUSIVE and V.base_llm_shift(True, False) == V.NOT_REPRODUCED


def test_premise_paragraph_holds_fails_or_is_uncertain_by_the_wilson_bounds():
    import types

    import pandas as pd

    from probekit.papers.a_stages import claims

    run = types.SimpleNamespace(model_id="m")

    def table(acc, n):
        return pd.DataFrame([{"variant": "anchor", "image shows": "a fashion item", "answered_correctly": acc, "n": n},
                             {"variant": "one_zero", "image shows": "a handwritten digit", "answered_correctly": 1.0,
                              "n": n}])

    assert "premise **holds**" in claims.premise_paragraph(run, table(0.99, 1000))  # Wilson low ~0.982
    fails = claims.premise_paragraph(run, table(0.80, 1000))
    assert "premise **fails**" in fails and "`anchor` on a fashion item (80.0%" in fails
    assert "premise is **uncertain**" in claims.premise_paragraph(run, table(0.95, 40))  # low ~0.83, high ~0.99
    para = pd.DataFrame([{"variant": "para_look", "image shows": "a fashion item", "answered_correctly": 0.5, "n": 30}])
    assert "`para_look`" in claims.premise_paragraph(run, table(0.99, 1000), para)


def test_parting_summary_and_gap_chart_say_what_the_bands_decide():
    import pandas as pd

    from probekit.papers.a_stages import charts, claims
    from probekit.papers.a_stages.analysis import DecisionFormat
    from probekit.papers.a_stages.stages import StageParams

    t = pd.DataFrame({"layer": range(5), "within": [0.5, 0.9, 0.9, 0.95, 0.95], "transfer": [0.5, 0.88, 0.7, 0.6, 0.9],
                      "gap": [0.0, 0.02, 0.2, 0.35, 0.05], "gap band low": [-0.05, -0.01, 0.12, 0.3, -0.02],
                      "gap band high": [0.05, 0.05, 0.28, 0.4, 0.12],
                      "shared (certain)": [False, True, False, False, False],
                      "shared (possible)": [True, True, False, False, True],
                      "formats part (certain)": [False, False, True, True, False],
                      "formats part (possible)": [False, False, True, True, True]})
    df = DecisionFormat(curves=pd.DataFrame(), parting_layer=2, table=t, params=StageParams(), n_images=300)
    s = claims.parting_summary(df)
    assert "certainly shared** across formats at layer(s) 1;" in s and "certainly part** at 2–3;" in s
    assert "undecided at 0, 4" in s and "300 held-out images" in s
    spec = charts.gap_chart(df, cap="Model: m").to_dict()
    assert spec["usermeta"]["caption"] == "Model: m"
    values = [r for d in spec["datasets"].values() for r in d if "status" in r]
    assert [r["status"] for r in sorted(values, key=lambda r: r["layer"])][:5] == [
        "undecided", "decision shared (certain)", "formats part (certain)", "formats part (certain)", "undecided"]


def test_parting_evidence_writes_the_parting_layer_as_a_layer_number():
    import pandas as pd

    from probekit.papers.a_stages import claims
    from probekit.papers.a_stages.analysis import DecisionFormat
    from probekit.papers.a_stages.stages import StageParams

    t = pd.DataFrame({"layer": [0, 1], "shared (certain)": [True, False], "shared (possible)": [True, False],
                      "formats part (certain)": [False, True], "formats part (possible)": [False, True]})
    share = pd.DataFrame({"parting layer": [1.0], "share": [1.0]})  # a float column, as pandas makes it
    df = DecisionFormat(curves=pd.DataFrame(), parting_layer=1, table=t, params=StageParams(), parting_share=share,
                        n_images=10)
    ev = claims.parting_evidence(df)
    assert ev["verdict"] == "reproduced" and "resampled images: 1, 100%" in ev["because"]


def test_a_pair_with_a_model_that_fails_the_premise_is_inconclusive_whatever_its_curves():
    """The premise rule (Wilson bounds against 0.90) is read per model; a failing model makes its pair inconclusive
    even where the curves alone would reproduce the claim, and the sentence names the model and its lowest prompt."""
    import pandas as pd

    from probekit.papers.a_stages import verdicts as V
    from probekit.papers.a_stages.comparison import pair_verdict

    def table(acc, n=200):
        return pd.DataFrame([{"variant": "anchor", "image shows": "a fashion item", "answered_correctly": 0.99, "n": n},
                             {"variant": "negation", "image shows": "a handwritten digit", "answered_correctly": acc,
                              "n": n}])

    good, bad = V.premise(table(1.0)), V.premise(table(0.10))
    assert good[0] == "holds" and bad[0] == "fails" and bad[1][0][0] == "negation"  # lowest lower bound first
    assert V.premise(table(0.91, 100))[0] == "uncertain"
    p = pd.Series({"factor": "LM fine-tuning", "model": "ft", "reference": "frozen", "controlled": True,
                   "differs in": "the LM"})
    assert pair_verdict(p, 0.01, 0.0, 0.02, 0.05, True, {"ft": good, "frozen": good})[0] == V.REPRODUCED
    verdict, because = pair_verdict(p, 0.01, 0.0, 0.02, 0.05, True, {"ft": good, "frozen": bad})
    assert verdict == V.INCONCLUSIVE and "`frozen` fails chapter 1's premise" in because
    assert "`negation` on images showing a handwritten digit, 10.0%" in because and "`ft`" not in because
    assert pair_verdict(p, 0.2, 0.1, 0.3, 0.05, True, {"ft": good, "frozen": good})[0] == V.NOT_REPRODUCED
