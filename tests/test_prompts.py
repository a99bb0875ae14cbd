import pytest
import yaml

from probekit.errors import PromptError
from probekit.prompts import load_variants, paper_a_variants

ANCHOR = "Does this image show an animal? The answer must be always yes or no."


def test_paper_a_set_is_the_anchor_plus_three_families():
    vs = paper_a_variants()
    by = {v.name: v for v in vs}
    assert vs[0].family == "anchor" and vs[0].text == ANCHOR and vs[0].expected == "yes"
    assert {v.family for v in vs} == {"anchor", "lexical", "semantic_negation", "output_format"}
    assert by["picture"].text == ANCHOR.replace("image", "picture")
    assert by["feature"].text == ANCHOR.replace("show", "feature")
    assert by["negation"].text == ANCHOR.replace("an animal", "a plane") and by["negation"].expected == "no"
    assert by["one_zero"].answers == ("1", "0") and by["one_zero"].expected == "1"
    assert by["one_zero"].text.endswith("always 1 or 0.")


def test_concepts_come_from_the_dataset():
    vs = paper_a_variants(concept="a fashion item", negation="a handwritten digit")
    assert vs[0].text.startswith("Does this image show a fashion item?")
    assert "a handwritten digit" in {v.name: v for v in vs}["negation"].text


def test_user_family_from_dict_and_yaml(tmp_path):
    spec = {"anchor": {"text": ANCHOR, "answers": ["yes", "no"], "expected": "yes"},
            "families": {"politeness": [{"name": "please", "text": "Please tell me: " + ANCHOR}],
                         "synonym": [{"name": "creature", "replace": {"an animal": "a creature"}}]}}
    vs = load_variants(spec)
    assert [v.family for v in vs] == ["anchor", "politeness", "synonym"]
    assert vs[2].text == ANCHOR.replace("an animal", "a creature") and vs[2].expected == "yes"
    f = tmp_path / "v.yaml"
    f.write_text(yaml.safe_dump(spec))
    assert load_variants(f) == vs
    assert [v.name for v in load_variants(f, families=["synonym"])] == ["anchor", "creature"]


@pytest.mark.parametrize("bad, words", [
    ({"families": {"lex": [{"name": "x", "replace": {"photo": "picture"}}]}}, ["does not contain", "'photo'"]),
    ({"families": {"fmt": [{"name": "x", "text": "Is it? Say A or B.", "answers": ["A", "B"]}]}}, ["no 'expected'"]),
    ({"families": {"fmt": [{"name": "x", "text": "Is it?", "expected": "maybe"}]}}, ["'maybe'", "not one of"]),
    ({"families": {"lex": [{"name": "anchor", "text": "Other?"}]}}, ["unique", "anchor"]),
    ({"families": {"lex": [{"name": "same", "replace": {"image": "image"}}]}}, ["equals the anchor"]),
    ({"families": {"lex": []}}, ["non-empty list"]),
])
def test_bad_variant_definitions_say_what_to_fix(bad, words):
    spec = {"anchor": {"text": ANCHOR, "answers": ["yes", "no"], "expected": "yes"}, **bad}
    with pytest.raises(PromptError) as e:
        load_variants(spec)
    for w in words:
        assert w in str(e.value)


def test_unknown_family_and_missing_file():
    with pytest.raises(PromptError, match="unknown variant family 'lexicl'"):
        paper_a_variants(families=["lexicl"])
    with pytest.raises(PromptError, match="not found"):
        load_variants("no/such/file.yaml")
