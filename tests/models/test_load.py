import json
import shutil

import pytest
import torch
from conftest import ARCHITECTURES, FAMILIES, TEXT_LAYERS

from probekit.errors import ModelLoadError
from probekit.extract import forward_batch
from probekit.models import SUPPORTED, load_model
from probekit.prompts import paper_a_variants, template

ANCHOR = paper_a_variants()[0].text


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_through_the_public_path(family, tiny_models):
    lm = tiny_models[family]
    assert type(lm.model).__name__ == ARCHITECTURES[family]
    assert lm.num_layers == TEXT_LAYERS
    assert lm.adapter.family == family
    assert lm.weights_sha256 and len(lm.weights_sha256) == 64
    assert lm.identity()["transformers"].startswith("5.")
    assert lm.tokenizer.convert_ids_to_tokens(lm.image_token_id) == lm.processor.image_token


@pytest.mark.parametrize("family", FAMILIES)
def test_layer_count_and_last_token_is_end_of_templated_prompt(family, tiny_models, fashion):
    lm = tiny_models[family]
    prompt = template(lm, ANCHOR)
    assert prompt.count(lm.processor.image_token) == 1 and ANCHOR in prompt
    assert not prompt.rstrip().endswith(ANCHOR)  # the generation prompt follows the question
    image = fashion[0][0]
    r = forward_batch(lm, [prompt], [image], position="last")
    assert r["hidden"].shape == (1, TEXT_LAYERS + 1, lm.hidden_size)
    # reference: one plain forward of the templated prompt, state at its final position
    inputs = lm.processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad():
        out = lm.model(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) == TEXT_LAYERS + 1
    ref = torch.stack([h[0, -1] for h in out.hidden_states])
    torch.testing.assert_close(r["hidden"][0], ref, atol=1e-5, rtol=0)
    assert int(r["first_token"][0]) == int(out.logits[0, -1].argmax())
    # the image-mean rule averages exactly the image-token positions
    m = forward_batch(lm, [prompt], [image], position="image_mean")["hidden"][0]
    is_img = inputs["input_ids"][0] == lm.image_token_id
    torch.testing.assert_close(m, torch.stack([h[0, is_img].mean(0) for h in out.hidden_states]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_equals_unbatched(family, tiny_models, fashion):
    lm = tiny_models[family]
    vs = paper_a_variants()
    prompts = [template(lm, v.text) for v in vs]
    images = [fashion[i][0] for i in range(len(vs))]
    if family.startswith("qwen"):  # a non-square image gives another token count: unequal lengths in one batch
        images[1] = images[1].resize((28, 56))
    batched = forward_batch(lm, prompts, images)["hidden"]
    for i in range(len(vs)):
        single = forward_batch(lm, prompts[i : i + 1], images[i : i + 1])["hidden"][0]
        torch.testing.assert_close(batched[i], single, atol=1e-5, rtol=0)


def test_unsupported_architecture_lists_the_supported(tiny_dirs, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_dirs["llava"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["IdeficsForVisionText2Text"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError) as e:
        load_model(str(d))
    assert "IdeficsForVisionText2Text" in str(e.value)
    for arch in SUPPORTED:
        assert arch in str(e.value)


def test_mistyped_local_path_and_unknown_hub_id():
    with pytest.raises(ModelLoadError, match="local model directory './no/such/model' does not exist"):
        load_model("./no/such/model")
    with pytest.raises(ModelLoadError, match="cannot load model 'nobody/no-such-model'"):
        load_model("nobody/no-such-model")


def test_processor_without_chat_template_is_refused(tiny_dirs, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_dirs["llava"], d)
    for f in d.glob("*.jinja"):
        f.unlink()
    for f in d.glob("*.json"):
        data = json.loads(f.read_text())
        if isinstance(data, dict) and "chat_template" in data:
            del data["chat_template"]
            f.write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match="no chat template"):
        load_model(str(d))


def test_processor_without_image_token_is_refused(tiny_dirs, monkeypatch):
    from transformers import AutoProcessor, AutoTokenizer

    d = tiny_dirs["llava"]
    bare = AutoTokenizer.from_pretrained(d)  # a common mistake: the tokenizer where the processor belongs
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda *a, **k: bare)
    with pytest.raises(ModelLoadError, match="no image token"):
        load_model(str(d))
    monkeypatch.undo()
    real = AutoProcessor.from_pretrained(d)
    real.image_token = "<picture-here>"  # a token its tokenizer does not have
    monkeypatch.setattr(AutoProcessor, "from_pretrained", lambda *a, **k: real)
    with pytest.raises(ModelLoadError, match="not a single token"):
        load_model(str(d))


def test_weights_hash_cache_drops_files_that_are_gone(tmp_path, monkeypatch):
    import json

    import probekit.models as M

    monkeypatch.setattr(M, "_HASH_CACHE", tmp_path / "hashes.json")
    a, b = tmp_path / "a", tmp_path / "b"
    for d, data in ((a, b"one"), (b, b"two")):
        d.mkdir()
        (d / "model.safetensors").write_bytes(data)
    ha = M.weights_sha256(a)
    M.weights_sha256(b)
    assert len(json.loads(M._HASH_CACHE.read_text())) == 2
    (a / "model.safetensors").unlink()
    (b / "model.safetensors").write_bytes(b"changed")
    hb = M.weights_sha256(b)
    keys = list(json.loads(M._HASH_CACHE.read_text()))
    assert len(keys) == 1 and keys[0].startswith(str((b / "model.safetensors").resolve()))
    assert hb != ha and len({ha, hb}) == 2


def test_placement_puts_a_model_on_one_gpu_when_it_fits_and_spreads_it_when_not():
    from probekit.models import HEADROOM, placement

    gib = 1 << 30
    assert placement("auto", 14 * gib, []) == (torch.device("cpu"), None)  # no GPU: the CPU
    assert placement("auto", 14 * gib, [40 * gib]) == (torch.device("cuda:0"), None)  # fits one GPU
    assert placement("auto", int(HEADROOM * 16 * gib) + 1, [16 * gib, 16 * gib]) == (torch.device("cuda:0"), "auto")
    assert placement("cpu", 100 * gib, [16 * gib]) == (torch.device("cpu"), None)  # an explicit device is kept


def test_model_bytes_counts_parameters_without_allocating(tiny_models):
    from probekit.models import model_bytes

    lm = tiny_models["qwen2_vl"]
    n = sum(p.numel() for p in lm.model.parameters())
    arch = type(lm.model).__name__
    assert model_bytes(lm.config, arch, torch.float32) == 4 * n
    assert model_bytes(lm.config, arch, torch.bfloat16) == 2 * n


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_device_map_auto_gives_the_same_states_and_answers(family, tiny_dirs, tiny_models, fashion, tmp_path):
    """accelerate's placement (hooks on every module; all on the CPU here) changes nothing in what is extracted."""
    from probekit.extract import extract

    mapped = load_model(str(tiny_dirs[family]), dtype="float32", device="auto", device_map="auto")
    assert mapped.info["device_map"] and mapped.device == torch.device("cpu")
    vs = paper_a_variants(fashion.concept, fashion.negation)
    data = fashion.subset(1)
    a = extract(mapped, data, vs, tmp_path / "mapped", progress=False, shard_size=5)
    b = extract(tiny_models[family], data, vs, tmp_path / "plain", progress=False, shard_size=5)
    assert a.extra["device_map"] == "auto" and b.extra["device_map"] is None
    for v in a.variant_names:
        torch.testing.assert_close(torch.from_numpy(a.features(v)), torch.from_numpy(b.features(v)), atol=1e-5, rtol=0)
    x, y = a.answers(), b.answers()
    assert (x.preferred == y.preferred).all()
    torch.testing.assert_close(torch.tensor(x.margin.to_numpy()), torch.tensor(y.margin.to_numpy()), atol=1e-4, rtol=0)


def test_an_unknown_device_map_is_one_clear_error(tiny_dirs):
    with pytest.raises(ModelLoadError, match="unknown device_map 'balanced'"):
        load_model(str(tiny_dirs["llava"]), device_map="balanced")


@pytest.mark.parametrize("family", FAMILIES)
def test_identify_says_what_the_loaded_model_says_without_loading_it(family, tiny_dirs, tiny_models, monkeypatch):
    import transformers

    from probekit.models import identify

    want = tiny_models[family].identity()
    cls = getattr(transformers, ARCHITECTURES[family])
    monkeypatch.setattr(cls, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("identify built a model")))
    assert identify(str(tiny_dirs[family]), dtype="float32", device="cpu") == {**want, "model_id": str(tiny_dirs[family])}
