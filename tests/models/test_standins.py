"""The readout on real text-side machinery: stand-ins of llava-hf/llava-1.5-7b-hf (Llama-2-style SentencePiece BPE in the
hub's tokenizer.json format, the real chat template and CLIP-336 processor), Qwen2-VL and Qwen2.5-VL (their real
tokenizer, chat template and processor files from tests/fixtures/real-text-side) and llava-hf/llama3-llava-next-8b-hf
(Llama-3-shaped byte-level BPE, its chat template, any-res processor), each on tiny random weights of the real class
(probekit.models.standins). Templated prompts, image-token counts, tokenizer facts, the answer sequences of every
paper-A and chapter-03 variant, extraction and probing through the CLI, and chapters 02 and 03 through papermill."""

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch

from probekit.models import load_model
from probekit.models.standins import (
    LLAMA3_SPECIALS,
    QWEN_IDS,
    llama3_llava_next_standin,
    llava15_standin,
    qwen2vl_standin,
)
from probekit.prompts import decision_variants
from probekit.prompts import paper_a_variants
from probekit.store import ActivationStore

ex = importlib.import_module("probekit.extract.hidden")
ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "tests" / "fixtures" / "real-text-side"
STANDINS = ("llava15", "qwen2_vl", "qwen2_5_vl", "llama3_llava_next")
QWEN = ("qwen2_vl", "qwen2_5_vl")
BYTE_LEVEL = (*QWEN, "llama3_llava_next")  # "Ġ" marks a leading space
ANCHOR = "Does this image show an animal? The answer must be always yes or no."
PROMPTS = {
    "llava15": f"USER: <image>\n{ANCHOR} ASSISTANT:",
    "qwen": ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
             f"<|vision_start|><|image_pad|><|vision_end|>{ANCHOR}<|im_end|>\n<|im_start|>assistant\n"),
    "llama3_llava_next": (f"<|start_header_id|>user<|end_header_id|>\n\n<image>\n{ANCHOR}<|eot_id|>"
                          "<|start_header_id|>assistant<|end_header_id|>\n\n"),
}


@pytest.fixture(scope="module")
def standin_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    return {
        "llava15": llava15_standin(root / "llava15"),
        "qwen2_vl": qwen2vl_standin(root / "qwen2_vl", "qwen2_vl", files=FILES / "qwen2-vl"),
        "qwen2_5_vl": qwen2vl_standin(root / "qwen2_5_vl", "qwen2_5_vl", files=FILES / "qwen2.5-vl",
                                      vocab_files=FILES / "qwen2-vl"),
        "llama3_llava_next": llama3_llava_next_standin(root / "llama3_llava_next"),
    }


@pytest.fixture(scope="module")
def standins(standin_dirs):
    return {k: load_model(str(d), dtype="float32", device="cpu") for k, d in standin_dirs.items()}


def _all_variants(ds=None):
    concept, negation = (ds.concept, ds.negation) if ds is not None else ("an animal", "a plane")
    vs = {v.name: v for v in paper_a_variants(concept, negation)}
    vs.update({v.name: v for v in decision_variants(concept, negation)})
    return list(vs.values())


def _ids(tok, *tokens):
    ids = tuple(tok.convert_tokens_to_ids(list(tokens)))
    assert tok.unk_token_id not in ids or "<unk>" in tokens, tokens
    return ids


# ---- prompts and images ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STANDINS)
def test_templated_prompt_exactly(standins, name):
    lm = standins[name]
    assert ex.template(lm, paper_a_variants()[0].text) == _prompt(name)


def _prompt(name):
    return PROMPTS["qwen" if name in QWEN else name]


def test_llava15_prompt_tokens_as_the_hub_tokenizer_json_gives_them(standins):
    """transformers 5 loads llava-hf's tokenizer.json as it is (TokenizersBackend: model type llava is on its list of
    hub configs whose tokenizer_class it ignores), so the legacy normalizer prepends '▁' to every text segment: after
    <image> the newline is '▁', '<0x0A>'. <s> comes first (add_bos_token)."""
    lm = standins["llava15"]
    tok = lm.tokenizer
    assert type(tok).__name__ == "TokenizersBackend"
    assert json.loads(tok.backend_tokenizer.normalizer.__getstate__())["normalizers"][0] == {"type": "Prepend",
                                                                                            "prepend": "▁"}
    toks = tok.convert_ids_to_tokens(tok(PROMPTS["llava15"])["input_ids"])
    assert toks[0] == "<s>" and toks[-1] == ":" and toks.count("<image>") == 1
    i = toks.index("<image>")
    assert toks[i - 1 : i + 4] == ["▁", "<image>", "▁", "<0x0A>", "Does"]


@pytest.mark.parametrize("name,n_tokens", [("llava15", 576), ("qwen2_vl", 4), ("qwen2_5_vl", 4),
                                           ("llama3_llava_next", 1176)])
def test_image_tokens_of_one_fashion_mnist_image(standins, fashion, name, n_tokens):
    lm = standins[name]
    image = fashion[0][0]
    assert image.size == (28, 28)
    enc = lm.processor(text=[_prompt(name)], images=[image], return_tensors="pt")
    assert int((enc["input_ids"] == lm.image_token_id).sum()) == n_tokens
    if name == "llava15":  # 28 px -> 336 shortest edge -> 336 crop -> 24 x 24 patches of 14 (CLS dropped)
        assert tuple(enc["pixel_values"].shape) == (1, 3, 336, 336)
    elif name == "llama3_llava_next":  # any-res: base view + the two tiles of 336 x 672; 576 + 24 x (24 + newline)
        assert tuple(enc["pixel_values"].shape) == (1, 3, 3, 336, 336) and enc["image_sizes"].tolist() == [[28, 28]]
    else:  # min_pixels 3136: 28 x 28 -> 56 x 56 -> 4 x 4 patches of 14 -> 2 x 2 merged tokens
        assert enc["image_grid_thw"].tolist() == [[1, 4, 4]]


# ---- tokenizer facts ---------------------------------------------------------------------------------------------

def test_llava15_tokenizer_is_llama2_shaped(standins):
    lm = standins["llava15"]
    tok = lm.tokenizer
    after = lambda s: tok(PROMPTS["llava15"] + s, add_special_tokens=False)["input_ids"][
        len(tok(PROMPTS["llava15"], add_special_tokens=False)["input_ids"]):]
    assert tok.convert_ids_to_tokens(after(" 1")) == ["▁", "1"]
    assert tok.convert_ids_to_tokens(after(" 0")) == ["▁", "0"]
    assert tok.convert_ids_to_tokens(after(" yes")) == ["▁yes"]
    vocab = tok.get_vocab()
    assert [vocab[t] for t in ("<unk>", "<s>", "</s>", "<0x00>", "<0xFF>", "▁▁")] == [0, 1, 2, 3, 258, 259]
    assert not [t for t in vocab if any(c.isdigit() for c in t) and len(t) > 1 and not t.startswith("<0x")]
    assert all(str(d) in vocab for d in range(10))
    assert tok.tokenize("é\n") == ["▁", "<0xC3>", "<0xA9>", "<0x0A>"]  # byte fallback, newline as a byte
    assert tok.decode(tok("é\n", add_special_tokens=False)["input_ids"]) == "é\n"
    assert tok.unk_token_id not in tok("Ünïcödé ✓ 🙂", add_special_tokens=False)["input_ids"]
    image, pad = vocab["<image>"], vocab["<pad>"]
    assert (image, pad, len(tok)) == (len(tok) - 2, len(tok) - 1, max(vocab.values()) + 1)  # added after the vocabulary
    assert lm.image_token_id == image and lm.config.pad_token_id == pad and tok.pad_token_id == pad
    n = lm.model.get_input_embeddings().num_embeddings
    assert n % 64 == 0 and len(tok) <= n < len(tok) + 64  # 32002 -> 32064 in the real checkpoint


def test_llama3_tokenizer_is_llama3_shaped(standins):
    lm = standins["llama3_llava_next"]
    tok = lm.tokenizer
    pre = tok.backend_tokenizer.pre_tokenizer
    assert [w for w, _ in pre.pre_tokenize_str("12345 is 1,000? Yes")] == ["123", "45", "Ġis", "Ġ", "1", ",", "000",
                                                                           "?", "ĠYes"]
    ids = tok(_prompt("llama3_llava_next"))["input_ids"]
    toks = tok.convert_ids_to_tokens(ids)
    assert toks[:5] == ["<|begin_of_text|>", "<|start_header_id|>", "user", "<|end_header_id|>", "ĊĊ"]
    assert toks[-4:] == ["<|start_header_id|>", "assistant", "<|end_header_id|>", "ĊĊ"]
    after = tok(_prompt("llama3_llava_next") + " 1", add_special_tokens=False)["input_ids"][len(ids) - 1:]
    assert tok.convert_ids_to_tokens(after) == ["Ġ", "1"]
    vocab = tok.get_vocab()
    first = vocab["<|begin_of_text|>"]
    assert [vocab[t] - first for t in LLAMA3_SPECIALS] == list(range(256)) and first == len(vocab) - 258
    assert (vocab["<image>"], vocab["<pad>"]) == (first + 256, first + 257) == (lm.image_token_id, lm.config.pad_token_id)
    assert tok.decode(tok("Ünïcödé ✓ 🙂", add_special_tokens=False)["input_ids"]) == "Ünïcödé ✓ 🙂"  # byte-level


@pytest.mark.parametrize("name", QWEN)
def test_qwen_ids_and_sizes_are_the_real_ones(standins, name):
    lm = standins[name]
    ids = QWEN_IDS[name]
    assert lm.model.get_input_embeddings().num_embeddings == ids["vocab_size"]
    assert len(lm.tokenizer) == {"qwen2_vl": 151657, "qwen2_5_vl": 151665}[name]
    for key, token in (("image_token_id", "<|image_pad|>"), ("vision_start_token_id", "<|vision_start|>"),
                       ("vision_end_token_id", "<|vision_end|>"), ("video_token_id", "<|video_pad|>")):
        assert getattr(lm.config, key) == ids[key] == lm.tokenizer.convert_tokens_to_ids(token)
    size = lm.processor.image_processor.size  # min_pixels / max_pixels, as transformers 5 keeps them
    assert (size.shortest_edge, size.longest_edge) == (3136, 12845056)
    if name == "qwen2_5_vl":  # the constants are the 7B config's
        real = json.loads((FILES / "qwen2.5-vl" / "config.7B.json").read_text())
        assert {k: real[k] for k in ids} == ids


# ---- answer sequences --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", STANDINS)
def test_answer_sequences_of_every_variant(standins, name):
    lm = standins[name]
    tok = lm.tokenizer
    vs = _all_variants()
    assert {"anchor", "picture", "feature", "negation", "one_zero", "negation_one_zero"} <= {v.name for v in vs}
    prompts = {v.name: ex.template(lm, v.text) for v in vs}
    plans = ex.answer_plan(lm, prompts, vs)
    space = "Ġ" if name in BYTE_LEVEL else "▁"
    for v in vs:
        forms = plans[v.name].forms
        assert forms[0] and forms[1] and not set(forms[0]) & set(forms[1]), v.name
        assert plans[v.name].answers == v.answers
        if v.answers == ("1", "0"):
            one, zero = _ids(tok, space, "1"), _ids(tok, space, "0")
            assert one in forms[0] and zero in forms[1] and one[0] == zero[0]  # two tokens, the first shared
            assert _ids(tok, "1") in forms[0] and _ids(tok, "0") in forms[1]
            assert (one[0],) in plans[v.name].rows
        else:
            for word, i in (("yes", 0), ("Yes", 0), ("no", 1), ("No", 1)):
                assert _ids(tok, space + word) in forms[i], (v.name, word)
                assert _ids(tok, word) in forms[i], (v.name, word)
            if name in BYTE_LEVEL:  # byte-level BPE: every yes/no form is one token: one row, nothing appended
                assert all(len(f) == 1 for fs in forms for f in fs) and plans[v.name].rows == ((),)


@pytest.mark.parametrize("name", ["llava15", "qwen2_vl", "llama3_llava_next"])
def test_readout_scores_the_two_token_forms(standins, fashion, name):
    """On the real token ids: the forms of "1"/"0" written out here (the digit alone, space + digit; not LLaVA-1.5's
    '▁▁' + digit, which spells two spaces after the prompt) are in the readout's plan; the stored
    log-probability is the best of the plan's forms; and the two-token forms alone, which share their first token,
    are scored as a plain full forward scores them (on the prefix cache, all variants in one pass)."""
    from model_tools import brute_force_logprob as _brute_force

    from probekit.prompts import AnswerForms

    lm = standins[name]
    tok = lm.tokenizer
    space = "Ġ" if name in BYTE_LEVEL else "▁"
    vs = [v for v in _all_variants(fashion) if v.name in ("anchor", "one_zero")]
    prompts = {v.name: ex.template(lm, v.text) for v in vs}
    plans = ex.answer_plan(lm, prompts, vs)
    mine = [[_ids(tok, d), _ids(tok, space, d)] for d in "10"]
    assert all(set(m) <= set(f) for m, f in zip(mine, plans["one_zero"].forms))
    if name == "llava15":  # " 1" encoded alone is '▁▁','1' ("ASSISTANT:  1", two spaces): not a form it would write
        assert not {_ids(tok, "▁▁", d) for d in "10"} & {f for fs in plans["one_zero"].forms for f in fs}
    two = AnswerForms("one_zero", ("1", "0"), 0, ((mine[0][1],), (mine[1][1],)))
    images = [fashion[i][0] for i in (0, 5)]
    plan = ex.shared_prefix(lm, prompts, images[0])
    got = ex.forward_shared(lm, images, plan, answers=plans, batch_variants=True)
    got2 = ex.forward_shared(lm, images, plan, answers={**plans, "one_zero": two}, batch_variants=True)
    j = list(prompts).index("one_zero")
    for i, image in enumerate(images):
        for a in (0, 1):
            best = _brute_force(lm, prompts["one_zero"], image, plans["one_zero"].forms[a])
            assert best >= max(_brute_force(lm, prompts["one_zero"], image, [f]) for f in mine[a]) - 1e-6
            assert float(got["logprob"][i, j, a]) == pytest.approx(best, abs=1e-4)
            want = _brute_force(lm, prompts["one_zero"], image, [mine[a][1]])
            assert float(got2["logprob"][i, j, a]) == pytest.approx(want, abs=1e-4)


# ---- the CLI and the chapters ------------------------------------------------------------------------------------

def _env():
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "probekit.cli", *map(str, args)], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=900)


@pytest.mark.parametrize("name", STANDINS)
def test_extract_and_probe_through_the_cli(standin_dirs, name, tmp_path):
    out = tmp_path / "store"
    r = _cli("extract", "--model", standin_dirs[name], "--dataset", "fashion-mnist", "--n-per-class", 2, "--out", out,
             "--device", "cpu", "--dtype", "float32")
    assert r.returncode == 0, r.stderr[-3000:]
    store = ActivationStore.open(out)
    assert store.is_complete() and not store.missing_shards()
    names = [v.name for v in paper_a_variants()]
    assert store.variant_names == names and len(store.ids) == 20
    a = store.answers()
    assert len(a) == 20 * len(names) and set(a.variant) == set(names)
    assert a.groupby("variant").size().eq(20).all()
    ok = a.variant.isin(["one_zero"])
    assert set(a[ok].preferred) <= {"1", "0"} and set(a[~ok].preferred) <= {"yes", "no"}
    assert (a.logprob_expected < 0).all() and (a.logprob_other < 0).all()
    seqs = store.key["answer_sequences"]["one_zero"]["forms"]
    assert any(len(f) == 2 for f in seqs[0]) and any(len(f) == 2 for f in seqs[1])
    csv = tmp_path / "probe.csv"
    r = _cli("probe", out, "--out", csv, "--n-boot", 50)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(csv)
    assert set(df.variant) == set(names) and set(df.layer) == set(range(store.n_layers))
    assert df.accuracy.between(0, 1).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llava15", "qwen2_5_vl"])
def test_chapters_02_and_03_through_papermill(standin_dirs, name, tmp_path):
    from notebook_tools import RECORD, outputs, run_papermill

    model = str(standin_dirs[name])
    params = {"model_id": model, "n_per_class": 3, "cache_dir": str(tmp_path / "cache"), "seed": 0}
    nb2 = nbformat.read(run_papermill("02_four_stages", tmp_path, params), as_version=4)
    rec = next(r for r in outputs(nb2, RECORD) if r["name"] == "four_stages")
    assert rec["model"] == model and rec["n_images"] == 60 and rec["blocks"] == 2  # both domains extracted
    assert 0 < rec["n_test"] < 30
    nb3 = nbformat.read(run_papermill("03_decision_vs_format", tmp_path, params), as_version=4)
    rec3 = next(r for r in outputs(nb3, RECORD) if r["name"] == "decision_format")
    assert rec3["model"] == model and rec3["blocks"] == 2 and rec3["n_images"] == 60  # fashion + held-out digits
    html = "\n".join(outputs(nb3, "text/html"))
    assert "Model: " + model in html
