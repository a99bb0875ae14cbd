"""Answers read as token sequences: every readout path equals a brute-force teacher-forced score."""

import importlib

import pytest
import torch
from conftest import FAMILIES
from model_tools import brute_force_logprob

from probekit.errors import PromptError
from probekit.models.build import train_tokenizer
from probekit.prompts import (
    AnswerForms,
    Variant,
    answer_forms,
    answer_token_sequences,
    paper_a_variants,
)

ex = importlib.import_module("probekit.extract.hidden")
ATOL = 1e-4


def _multi_token_plans(lm, variants, prompts):
    """The real plans, plus made-up multi-token forms that share first tokens (as " 1"/" 0" do under Llama-2)."""
    plans = ex.answer_plan(lm, prompts, variants)
    out = {}
    for i, v in enumerate(variants):
        p = plans[v.name]
        a, b, c = 100 + i, 120 + i, 140 + i  # ordinary tokens (the low ids are special, e.g. image tokens)
        extra = ((a, b), (a, c, b))  # answer 0 gains "a b" and "a c b"; answer 1 gains "a c" (shares "a", "a c")
        out[v.name] = AnswerForms(p.variant, p.answers, p.expected,
                                  (p.forms[0] + extra, p.forms[1] + ((a, c),)))
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_every_path_scores_whole_sequences_like_a_full_forward(family, tiny_models, fashion):
    lm = tiny_models[family]
    vs = paper_a_variants(fashion.concept, fashion.negation)
    prompts = {v.name: ex.template(lm, v.text) for v in vs}
    plans = _multi_token_plans(lm, vs, prompts)
    assert all(len(p.rows) >= 2 and any(len(r) == 2 for r in p.rows) for p in plans.values())
    images = [fashion[i][0] for i in range(3)]
    plan = ex.shared_prefix(lm, prompts, images[0])
    seq = ex.forward_shared(lm, images, plan, answers=plans)
    bat = ex.forward_shared(lm, images, plan, answers=plans, batch_variants=True)
    pairs = [(i, v) for i in range(len(images)) for v in prompts]
    ref = ex.forward_batch(lm, [prompts[v] for _, v in pairs], [images[i] for i, _ in pairs],
                           answers=[plans[v] for _, v in pairs])
    for k in ("hidden", "logprob"):
        torch.testing.assert_close(bat[k], seq[k], atol=ATOL, rtol=0)
        torch.testing.assert_close(ref[k].reshape(seq[k].shape), seq[k], atol=ATOL, rtol=0)
    assert torch.equal(bat["first_token"], seq["first_token"])
    for i in (0, 2):
        for j, v in enumerate(prompts):
            for a in (0, 1):
                want = brute_force_logprob(lm, prompts[v], images[i], plans[v].forms[a])
                assert abs(float(seq["logprob"][i, j, a]) - want) < ATOL, (v, a)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_the_cache_is_left_as_the_prefix_left_it(family, tiny_models, fashion):
    """Running answer rows (the cache repeated per row) twice gives the same numbers: nothing leaks between passes."""
    lm = tiny_models[family]
    vs = paper_a_variants(fashion.concept, fashion.negation)
    prompts = {v.name: ex.template(lm, v.text) for v in vs}
    plans = _multi_token_plans(lm, vs, prompts)
    images = [fashion[i][0] for i in range(2)]
    plan = ex.shared_prefix(lm, prompts, images[0])
    once = ex.forward_shared(lm, images, plan, answers=plans)
    reversed_plan = ex.SharedPrefix(plan.prompts, dict(reversed(plan.suffixes.items())))
    again = ex.forward_shared(lm, images, reversed_plan, answers=plans)
    torch.testing.assert_close(again["logprob"].flip(1), once["logprob"], atol=ATOL, rtol=0)


def test_extract_stores_preferred_answer_margin_and_first_token(tiny_models, fashion, tmp_path):
    lm = tiny_models["llava"]
    vs = paper_a_variants(fashion.concept, fashion.negation)
    store = ex.extract(lm, fashion.subset(1), vs, tmp_path / "s", progress=False)
    a = store.answers()
    assert set(a.preferred) <= {"yes", "no", "1", "0"}
    assert ((a.margin > 0) == a.correct).all() and (a.margin == a.logprob_expected - a.logprob_other).all()
    assert (a.logprob_expected <= 0).all() and (a.logprob_other <= 0).all()
    seqs = store.key["answer_sequences"]
    assert set(seqs) == {v.name for v in vs} and all(len(s["forms"]) == 2 for s in seqs.values())


def test_surface_forms_are_continuations_and_standalone_encodings(tiny_models):
    tok = tiny_models["qwen2_vl"].tokenizer
    prompt = "<|im_start|>assistant\n"
    seqs = answer_token_sequences(tok, prompt, "yes")
    for form in ("yes", " yes", "Yes", " Yes"):
        assert tuple(tok.encode(form, add_special_tokens=False)) in seqs
    base = tok.encode(prompt, add_special_tokens=False)
    assert tuple(tok.encode(prompt + "yes", add_special_tokens=False)[len(base):]) in seqs


def test_answers_that_are_the_same_token_sequences_are_one_clear_error():
    texts = ["Does this image show a dog? yes no Yes No"] * 20
    tok = train_tokenizer(texts, vocab_size=60, kind="wordpiece", lowercase=True)
    v = Variant(name="cased", family="x", text="Is it? Yes or yes?", answers=("Yes", "yes"), expected="Yes")
    with pytest.raises(PromptError, match=r"'Yes' and 'yes' are the same token sequences"):
        answer_forms(tok, "Q: Is it?\nA:", v)
    ok = answer_forms(tok, "Q: Is it?\nA:", Variant("a", "x", "Is it?", ("yes", "no"), "yes"))
    assert ok.forms[0] and ok.forms[1] and not set(ok.forms[0]) & set(ok.forms[1])


def test_cli_batch_variants_and_device_map_write_the_same_numbers(tiny_dirs, tmp_path):
    import numpy as np

    from probekit.cli import main
    from probekit.store import ActivationStore

    common = ["extract", "--model", str(tiny_dirs["qwen2_vl"]), "--dataset", "fashion-mnist", "--n-per-class", "1",
              "--device", "cpu", "--dtype", "float32", "--shard-size", "4"]
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--out", str(tmp_path / "b"), "--batch-variants", "--device-map", "auto"]) == 0
    a, b = ActivationStore.open(tmp_path / "a"), ActivationStore.open(tmp_path / "b")
    assert b.extra["batch_variants"] and b.extra["device_map"] == "auto" and not a.extra["batch_variants"]
    for v in a.variant_names:
        np.testing.assert_allclose(a.features(v), b.features(v), atol=ATOL, rtol=0)
    np.testing.assert_allclose(a.answers().margin, b.answers().margin, atol=ATOL)


def test_a_form_is_kept_only_when_it_spells_the_prompt_plus_the_answer():
    """A SentencePiece-like tokenizer that marks the start of every text writes " yes" on its own as '▁▁','yes'
    (two spaces after the prompt): not a form the model writes; ' yes' and 'yes' after the prompt are."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    pieces = ["<unk>", "▁", "▁▁", "y", "e", "s", "n", "o", "ye", "yes", "no", "▁yes", "▁no", "A", ":", "▁A"]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [("▁", "▁"), ("y", "e"), ("ye", "s"), ("n", "o"), ("▁", "yes"), ("▁", "no"), ("▁", "A")]
    t = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True))
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>")
    assert tok.convert_ids_to_tokens(tok.encode(" yes", add_special_tokens=False)) == ["▁▁", "yes"]
    seqs = answer_token_sequences(tok, "A:", "yes")
    assert (vocab["▁yes"],) in seqs and (vocab["yes"],) in seqs and (vocab["▁▁"], vocab["yes"]) not in seqs
