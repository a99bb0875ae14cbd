"""The four-stage segmentation on synthetic accuracy curves (probekit.papers.a_stages.stages)."""

import numpy as np
import pandas as pd
import pytest

from probekit.papers.a_stages.stages import (
    PRE_STAGE,
    STAGES,
    StageParams,
    normalized_depth,
    segment,
    segment_results,
)

CHANCE = 0.1


def paper_like(n=33, lex=(5, 14), neg=(14, 16), fmt=(16, 33), d_lex=0.4, d_neg=0.3, d_fmt=0.5, first=1):
    """Curves shaped like paper A's LLaVA-1.5 description: informative from layer `first`, lexical drop on
    [lex), negation drop on [neg), format drop on [fmt)."""
    a = np.full(n, 0.9)
    a[:first] = CHANCE
    fam = {k: a.copy() for k in ("lexical", "semantic_negation", "output_format")}
    fam["lexical"][slice(*lex)] -= d_lex
    fam["semantic_negation"][slice(*neg)] -= d_neg
    fam["output_format"][slice(*fmt)] -= d_fmt
    return a, fam


def test_recovers_planted_stages():
    a, fam = paper_like()
    seg = segment(a, fam, chance=CHANCE)
    assert seg.ranges() == {"visual grounding": (1, 4), "lexical integration": (5, 13),
                            "semantic reasoning": (14, 15), "answer decoding": (16, 32)}
    b = seg.boundaries()
    assert list(b.stage) == [PRE_STAGE, *STAGES]
    assert b.set_index("stage").n_layers.sum() == 33


def test_labels_are_ordered_and_contiguous_on_random_curves():
    rng = np.random.default_rng(0)
    order = {s: i for i, s in enumerate((PRE_STAGE, *STAGES))}
    for _ in range(50):
        n = int(rng.integers(3, 40))
        a = rng.uniform(0, 1, n)
        fam = {k: rng.uniform(0, 1, n) for k in ("lexical", "semantic_negation", "output_format")}
        seg = segment(a, fam, chance=0.1, control=rng.uniform(0, 0.2, n))
        idx = [order[s] for s in seg.labels]
        assert idx == sorted(idx)
        assert len(seg.labels) == n


def test_overlapping_lexical_and_negation_sensitivity():
    # negation breaks the probe while lexical edits do too (5-13) and after (12-15): the semantic stage starts
    # where the lexical sensitivity ends, as paper A's overlapping ranges would suggest
    a, fam = paper_like(neg=(12, 16))
    r = segment(a, fam, chance=CHANCE).ranges()
    assert r["lexical integration"] == (5, 13) and r["semantic reasoning"] == (14, 15)


def test_threshold_controls_sensitivity():
    a, fam = paper_like(d_lex=0.12)
    assert segment(a, fam, chance=CHANCE, drop=0.10).ranges()["lexical integration"] == (5, 13)
    r = segment(a, fam, chance=CHANCE, drop=0.15).ranges()
    assert r["lexical integration"] is None
    assert r["visual grounding"] == (1, 13)


def test_noise_below_threshold_does_not_move_boundaries():
    a, fam = paper_like()
    rng = np.random.default_rng(1)
    noisy = {k: v + rng.uniform(-0.04, 0.04, len(v)) for k, v in fam.items()}
    assert segment(a, noisy, chance=CHANCE).ranges() == segment(a, fam, chance=CHANCE).ranges()


def test_single_outlier_layer_is_absorbed():
    a, fam = paper_like()
    fam["output_format"][8] -= 0.5  # one format-sensitive layer inside the lexical stage
    assert segment(a, fam, chance=CHANCE).ranges()["answer decoding"] == (16, 32)


def test_smoothing_window():
    a, fam = paper_like()
    fam["output_format"][20] += 0.5  # a one-layer dip of sensitivity inside the decoding stage
    assert segment(a, fam, chance=CHANCE, smooth=3).ranges()["answer decoding"][1] == 32


def test_uninformative_and_missing_families():
    n = 10
    seg = segment(np.full(n, CHANCE), {}, chance=CHANCE)
    assert set(seg.labels) == {PRE_STAGE}
    assert all(v is None for v in seg.ranges().values())
    a = np.r_[CHANCE, np.full(n - 1, 0.8)]
    seg = segment(a, {}, chance=CHANCE)
    assert seg.ranges()["visual grounding"] == (1, n - 1)


def test_control_raises_the_information_floor():
    a = np.r_[0.1, 0.3, np.full(8, 0.9)]
    assert segment(a, {}, chance=0.1).ranges()["visual grounding"] == (1, 9)
    ctrl = np.r_[0.1, 0.35, np.full(8, 0.1)]  # the shuffled control reaches 0.35 at layer 1
    assert segment(a, {}, chance=0.1, control=ctrl).ranges()["visual grounding"] == (2, 9)


def test_params_are_validated():
    with pytest.raises(ValueError):
        StageParams(drop=0)
    with pytest.raises(ValueError):
        StageParams(smooth=0)
    with pytest.raises(ValueError):
        segment([0.5, 0.6], {"lexical": [0.5]}, chance=0.1)


def test_segment_results_from_probe_table():
    a, fam = paper_like(n=12, lex=(3, 6), neg=(6, 8), fmt=(8, 12))
    rows = []
    for layer in range(12):
        rows.append({"layer": layer, "variant": "anchor", "family": "anchor", "accuracy": a[layer],
                     "control_accuracy": CHANCE, "chance": CHANCE})
        for f, v in fam.items():
            for k in range(2 if f == "lexical" else 1):
                rows.append({"layer": layer, "variant": f"{f}{k}", "family": f, "accuracy": v[layer],
                             "control_accuracy": CHANCE, "chance": CHANCE})
    seg = segment_results(pd.DataFrame(rows))
    assert seg.ranges() == {"visual grounding": (1, 2), "lexical integration": (3, 5),
                            "semantic reasoning": (6, 7), "answer decoding": (8, 11)}
    bands = seg.bands()
    assert list(bands.start) == [-0.5, 0.5, 2.5, 5.5, 7.5]


def test_normalized_depth():
    assert normalized_depth([0, 4, 8], 9).tolist() == [0.0, 0.5, 1.0]


def test_exclusive_signatures_when_negation_and_format_break_every_layer():
    # shaped like llava-organism's measured curves: negation and format break the anchor probe from layer 1
    # on, lexical edits only in layers 2-6 -> lexical integration, then answer decoding; semantic reasoning
    # cannot be told apart from decoding and stays empty
    a = np.r_[CHANCE, np.full(8, 0.7)]
    lex = a.copy()
    lex[2:7] -= 0.3
    low = np.r_[CHANCE, np.full(8, 0.1)]
    r = segment(a, {"lexical": lex, "semantic_negation": low, "output_format": low}, chance=CHANCE).ranges()
    assert r["lexical integration"][1] == 6 and r["answer decoding"] == (7, 8)
    assert r["semantic reasoning"] is None
