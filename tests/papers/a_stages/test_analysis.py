"""Chapter helpers that need no model: which organisms form paper A's controlled pairs."""

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
