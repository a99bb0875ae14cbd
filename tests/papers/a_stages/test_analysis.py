"""Chapter helpers that need no model: which organisms form paper A's controlled pairs."""

import pytest

import probekit.organisms as O
from probekit.organisms import ORGANISMS, recipe_confounds
from probekit.papers.a_stages.comparison import controlled_pairs


def test_controlled_pairs_cover_each_factor_once_against_the_base():
    ids = [*ORGANISMS, "smol-llava"]
    t = controlled_pairs(ids)
    registry = t[t.factor != "base LLM"]
    assert sorted(registry.factor) == ["instruction data", "pretraining corpus", "tokenizer"]
    assert set(registry.reference) == {"llava-organism"}
    assert set(registry.model) == {"llava-organism-tokenizer", "llava-organism-instruct", "llava-organism-corpus"}
    for _, p in registry.iterrows():  # controlled exactly when the shipped weights share one recipe
        assert p.controlled == (not recipe_confounds(p.model, p.reference)), p.model
        assert ("not a controlled pair" in p["differs in"]) == (not p.controlled)
    base = t[t.factor == "base LLM"]
    assert not base.controlled.any() and set(base.model) == {"qwen2vl-organism", "smol-llava"}
    assert base.set_index("model").loc["smol-llava", "differs in"].count("SmolLM2") == 1


def test_a_pair_needs_its_reference():
    t = controlled_pairs(["llava-organism-tokenizer", "smol-llava", "qwen2vl-organism"])
    assert t.empty
    t = controlled_pairs(["llava-organism", "llava-organism-instruct"])
    assert t.factor.tolist() == ["instruction data"]


def test_recipe_confounds_are_the_differences_beyond_the_controlled_factor(monkeypatch):
    import dataclasses

    base = dataclasses.asdict(ORGANISMS["llava-organism"])
    tok = dataclasses.asdict(ORGANISMS["llava-organism-tokenizer"])
    shipped = {"llava-organism": base, "llava-organism-tokenizer": dict(tok)}
    monkeypatch.setattr(O, "trained_recipe", lambda name: shipped.get(name))
    assert recipe_confounds("llava-organism-tokenizer", "llava-organism") == {}  # the tokenizer fields are intended
    shipped["llava-organism-tokenizer"]["instruct_steps"] = 800  # trained by an older recipe
    assert recipe_confounds("llava-organism-tokenizer", "llava-organism") == {
        "instruct_steps": (800, base["instruct_steps"])}
    shipped.pop("llava-organism")
    assert recipe_confounds("llava-organism-tokenizer", "llava-organism") == {}  # nothing recorded: nothing claimed


def test_the_smol_pair_is_controlled_on_the_lm_and_says_its_schedules(monkeypatch):
    from probekit.organisms.smol_llava import constants as K

    shipped = controlled_pairs(["smol-llava", "smol-llava-ft"]).set_index("factor").loc["LM fine-tuning"]
    assert bool(shipped.controlled), shipped["differs in"]  # the shipped pair: one recipe, the LM aside
    monkeypatch.setattr(K, "pair_differences", lambda: {"stage 2 lr": (0.001, 0.002), "stage 2 steps": (300, 420),
                                                        "stage 2 kept step": (300, 400)})
    row = controlled_pairs(["smol-llava", "smol-llava-ft"]).set_index("factor").loc["LM fine-tuning"]
    assert row.model == "smol-llava-ft" and row.reference == "smol-llava" and bool(row.controlled)
    assert "stage 2 lr 0.001 vs 0.002" in row["differs in"] and "stage 2 steps 300 vs 420" in row["differs in"]
    assert "stage 2 kept step 300 vs 400" in row["differs in"]
    assert "everything else identical" in row["differs in"]
    monkeypatch.setattr(K, "pair_differences", lambda: {"seed": (1, 0), "stage 2 lr": (0.001, 0.002)})
    row = controlled_pairs(["smol-llava", "smol-llava-ft"]).set_index("factor").loc["LM fine-tuning"]
    assert not row.controlled and "seed 1 vs 0" in row["differs in"] and "not a controlled pair" in row["differs in"]


def test_chapter_four_tables_write_layers_as_numbers_and_one_interval_column():
    from types import SimpleNamespace

    import pandas as pd

    from probekit.papers.a_stages.comparison import Comparison, pair_table, stage_boundaries_wide

    seg = SimpleNamespace(ranges=lambda: {"visual grounding": None, "lexical integration": (1, 1),
                                          "semantic reasoning": None, "answer decoding": (2, 30)})
    pairs = pd.DataFrame([{"factor": "tokenizer", "model": "a", "reference": "b", "controlled": True, "D": 0.04,
                           "D low": 0.011, "D high": 0.064, "noise floor": 0.039, "same stage sequence": False,
                           "verdict": "inconclusive"}])
    comp = Comparison(curves=None, stages=None, segmentations={"a": seg}, pairs=pairs, drops=None, noise=None,
                      blocks={"a": 30})
    wide = stage_boundaries_wide(comp)
    assert wide.loc["a", "lexical integration"] == "1 (0.03)" and wide.loc["a", "answer decoding"] == "2–30 (0.07–1.00)"
    assert wide.loc["a", "visual grounding"] == "—"
    row = pair_table(comp).loc["tokenizer"]
    assert row["D (95 % interval)"] == "0.040 (0.011–0.064)" and row["models"] == "a vs b"
    assert (row["controlled"], row["same stages"], row["verdict"]) == ("yes", "no", "inconclusive")


def test_status_rows_write_a_one_layer_stage_as_one_layer_and_one_depth():
    from probekit.papers.a_stages.claims import depth_range, layer_range

    assert (layer_range((1, 1)), depth_range((1, 1), 30)) == ("1", " (depth 0.03)")
    assert (layer_range((2, 30)), depth_range((2, 30), 30)) == ("2–30", " (depth 0.07–1.00)")
    assert (layer_range(None), depth_range(None, 30)) == ("—", "")


def test_the_resolution_note_states_n_and_a_difference_that_shrinks_with_n():
    import re

    from probekit.papers.a_stages.claims import resolution_note

    small, big = resolution_note(100, 0.8), resolution_note(400, 0.8)
    d = [float(re.search(r"at least \*\*([0-9.]+)\*\*", t).group(1)) for t in (small, big)]
    assert "n = 100 held-out images" in small and d[1] == pytest.approx(d[0] / 2, rel=0.01)
    bound = float(re.search(r"at least \*\*([0-9.]+)\*\*", resolution_note(100)).group(1))
    assert bound > d[0]  # at 0.5 the bound is widest
