"""Chapter helpers that need no model: which organisms form paper A's controlled pairs."""

from probekit.organisms import ORGANISMS
from probekit.papers.a_stages.analysis import controlled_pairs


def test_controlled_pairs_cover_each_factor_once_against_the_base():
    ids = [*ORGANISMS, "smol-llava"]
    t = controlled_pairs(ids)
    controlled = t[t.controlled]
    assert sorted(controlled.factor) == ["instruction data", "pretraining corpus", "tokenizer"]
    assert set(controlled.reference) == {"llava-organism"}
    assert set(controlled.model) == {"llava-organism-tokenizer", "llava-organism-instruct", "llava-organism-corpus"}
    base = t[~t.controlled]
    assert (base.factor == "base LLM").all() and set(base.model) == {"qwen2vl-organism", "smol-llava"}
    assert base.set_index("model").loc["smol-llava", "differs in"].count("SmolLM2") == 1


def test_a_pair_needs_its_reference():
    t = controlled_pairs(["llava-organism-tokenizer", "smol-llava", "qwen2vl-organism"])
    assert t.empty
    t = controlled_pairs(["llava-organism", "llava-organism-instruct"])
    assert t.factor.tolist() == ["instruction data"]
