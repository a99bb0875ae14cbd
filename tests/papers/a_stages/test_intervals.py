"""Paper A's interval evidence: paired drops, simultaneous bands, certain/possible signatures, stage bootstrap."""

import numpy as np
import pandas as pd
import pytest

from probekit.papers.a_stages.intervals import (drop_table, segment_intervals, stage_bootstrap, sweep_summary,
                                               threshold_sweep)

L = 8
VARIANTS = {"anchor": "anchor", "picture": "lexical", "feature": "lexical", "negation": "semantic_negation",
            "one_zero": "output_format"}


def fake_results(n: int, drops: dict[str, np.ndarray], seed: int = 0, anchor_acc: float = 0.9) -> pd.DataFrame:
    """A probe_store-shaped result: every variant's per-image correctness, the anchor right on ``anchor_acc`` of the
    images at every layer but 0, a variant wrong on an extra share ``drops[family][layer]`` of them."""
    rng = np.random.default_rng(seed)
    u = rng.random((n, L))
    anchor = u < anchor_acc
    anchor[:, 0] = u[:, 0] < 0.1  # layer 0: chance
    correct = {"anchor": anchor}
    for v, f in VARIANTS.items():
        if f == "anchor":
            continue
        d = drops.get(f, np.zeros(L))
        extra = rng.random((n, L)) < d / anchor_acc  # paired: a variant is only wrong where the anchor is right ...
        correct[v] = anchor & ~extra
    ctrl = rng.random((n, L)) < 0.1
    rows = [{"layer": layer, "variant": v, "family": f, "accuracy": correct[v][:, layer].mean(), "chance": 0.1,
             "control_accuracy": ctrl[:, layer].mean(), "n_test": n} for v, f in VARIANTS.items() for layer in range(L)]
    df = pd.DataFrame(rows)
    df.attrs["correct"] = correct
    df.attrs["control_correct"] = {"anchor": ctrl}
    return df


def test_drops_are_paired_means_with_bands_wider_than_pointwise():
    lex = np.array([0, 0, .5, .5, 0, 0, 0, 0])
    res = fake_results(400, {"lexical": lex})
    t = drop_table(res, n_boot=500)
    fam = t[(t.kind == "family") & (t.unit == "lexical")].sort_values("layer")
    pic = res.attrs["correct"]["picture"].astype(float)
    fea = res.attrs["correct"]["feature"].astype(float)
    want = res.attrs["correct"]["anchor"].mean(0) - (pic + fea).mean(0) / 2
    np.testing.assert_allclose(fam["drop"], want)
    assert (fam.band_lo <= fam.lo).all() and (fam.band_hi >= fam.hi).all()
    assert set(t[t.kind == "variant"].unit) == {"picture", "feature", "negation", "one_zero"}


def test_a_large_drop_on_many_images_is_a_certain_stage_and_on_few_only_possible():
    lex = np.array([0, 0, .45, .45, 0, 0, 0, 0])
    fmt = np.array([0, 0, 0, 0, 0, .45, .45, .45])
    big = segment_intervals(fake_results(600, {"lexical": lex, "output_format": fmt}), n_boot=500, drop=0.10)
    r = big.ranges()
    assert r["lexical integration"] == (2, 3) and r["answer decoding"][1] == 7
    assert big.certain["answer decoding"][5:].all() and not big.certain["answer decoding"][:5].any()
    assert big.certain["visual grounding"][1] and big.certain["visual grounding"][4]
    assert not big.certain["semantic reasoning"].any()
    small = segment_intervals(fake_results(12, {"lexical": lex * 0.4, "output_format": fmt * 0.4}, seed=2),
                              n_boot=500, drop=0.10)
    assert not small.certain["lexical integration"].any() and small.possible["lexical integration"][2:4].all()


def test_stage_bootstrap_shares_sum_to_one_per_layer_and_follow_the_evidence():
    lex = np.array([0, 0, .5, .5, 0, 0, 0, 0])
    fmt = np.array([0, 0, 0, 0, .5, .5, .5, .5])  # the paper's order: a lexical stage, then answer decoding
    b = stage_bootstrap(fake_results(300, {"lexical": lex, "output_format": fmt}), n_boot=50)
    sums = b.groupby("layer").share.sum()
    np.testing.assert_allclose(sums, 1.0)
    s = b.set_index(["layer", "stage"]).share
    assert s[(2, "lexical integration")] > 0.9 and s[(0, "before grounding")] > 0.9 and s[(6, "answer decoding")] > 0.9


def test_the_threshold_sweep_shrinks_stages_as_the_drop_threshold_rises():
    lex = np.array([0, 0, .12, .5, 0, 0, 0, 0])
    sw = threshold_sweep(fake_results(600, {"lexical": lex}), drops=(0.02, 0.3), infos=(0.1,), n_boot=300)
    certain = sw[sw.stage == "lexical integration"].set_index("drop")["layers certain"]
    assert certain[0.02] > certain[0.3] >= 1
    table = sweep_summary(sw)  # layers as layer numbers ("2–3", "3"), never floats ("2.0–3.0"), absent stages "—"
    cells = [c for c in table.drop(columns=["drop", "info"]).to_numpy().ravel() if c != "—"]
    assert cells and all(p.isdigit() for c in cells for p in str(c).split("–")), cells


def test_results_without_per_image_correctness_are_one_clear_error():
    with pytest.raises(ValueError, match="per-image correctness"):
        drop_table(pd.DataFrame({"variant": ["anchor"], "family": ["anchor"], "chance": [0.1]}))
