"""probekit.models.build: tiny random multimodal LLMs of the real transformers classes, built offline."""

import json

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoProcessor

from probekit.models.build import (
    CORPUS,
    FAMILIES,
    IMAGE_TOKEN,
    MODEL_CLASSES,
    SPECIAL_TOKENS,
    build_tiny,
    chat_template,
    make_model,
    special_token_ids,
    train_tokenizer,
)

IMAGE_SIZE, PATCH, TEXT_LAYERS = 28, 7, 3  # 3 text layers != 2 vision layers, so a mix-up shows
# (28/7)^2 patches; llava-next adds one 4x4 tile + 4 row newlines; qwen merges 2x2 patches.
EXPECTED_IMAGE_TOKENS = {"llava": 16, "llava_next": 16 + 16 + 4, "qwen2_vl": 4, "qwen2_5_vl": 4}
QUESTION = "Does this image show an animal? The answer must be always yes or no."
MESSAGES = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
BUILD_KW = dict(image_size=IMAGE_SIZE, patch_size=PATCH, text_layers=TEXT_LAYERS)
REAL_CLASSES = {  # processor, image processor
    "llava": ("LlavaProcessor", "CLIPImageProcessor"),
    "llava_next": ("LlavaNextProcessor", "LlavaNextImageProcessor"),
    "qwen2_vl": ("Qwen2VLProcessor", "Qwen2VLImageProcessor"),
    "qwen2_5_vl": ("Qwen2_5_VLProcessor", "Qwen2VLImageProcessor"),
}


@pytest.fixture(scope="module", params=FAMILIES)
def built(request, tmp_path_factory):
    family = request.param
    path = build_tiny(family, tmp_path_factory.mktemp(family), seed=0, **BUILD_KW)
    processor = AutoProcessor.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    model = MODEL_CLASSES[family].from_pretrained(path).eval()
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (180, 40, 90)), return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return dict(family=family, path=path, processor=processor, config=config, model=model, text=text, inputs=inputs, out=out)


def _image_inputs(inputs):
    return {k: v for k, v in inputs.items() if k in ("pixel_values", "image_sizes", "image_grid_thw")}


def test_loads_back_as_real_classes(built):
    family, processor, config, model = built["family"], built["processor"], built["config"], built["model"]
    assert type(model) is MODEL_CLASSES[family]
    assert config.model_type == family
    assert (type(processor).__name__, type(processor.image_processor).__name__) == REAL_CLASSES[family]
    assert model.dtype == torch.float32 and not model.training
    assert len(model.model.language_model.layers) == config.text_config.num_hidden_layers == TEXT_LAYERS
    assert config.text_config.vocab_size == len(processor.tokenizer)
    assert processor.chat_template == chat_template(family)


def test_special_token_ids_are_consistent(built):
    family, processor, config = built["family"], built["processor"], built["config"]
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN[family])
    assert image_id != tok.unk_token_id
    assert config.image_token_id == image_id == processor.image_token_id
    assert tok.encode(IMAGE_TOKEN[family], add_special_tokens=False) == [image_id]  # atomic
    assert config.text_config.pad_token_id == tok.pad_token_id != image_id
    if family.startswith("qwen"):
        assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
        assert config.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
        assert config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")


def test_chat_template_renders_family_prompt(built):
    text = built["text"]
    if built["family"].startswith("llava"):
        assert text == f"USER: <image>\n{QUESTION} ASSISTANT:"
    else:
        assert f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n" in text
        assert text.endswith("<|im_start|>assistant\n")
    no_prompt = built["processor"].apply_chat_template(MESSAGES, add_generation_prompt=False, tokenize=False)
    assert text.startswith(no_prompt) and text != no_prompt


def test_image_tokens_match_model_image_features(built):
    family, config, model, inputs, out = built["family"], built["config"], built["model"], built["inputs"], built["out"]
    n_tokens = int((inputs["input_ids"] == config.image_token_id).sum())
    assert n_tokens == EXPECTED_IMAGE_TOKENS[family]
    with torch.no_grad():
        feats = model.get_image_features(**_image_inputs(inputs)).pooler_output
    hidden = config.text_config.hidden_size
    assert torch.cat([f.reshape(-1, hidden) for f in feats]).shape[0] == n_tokens
    if family.startswith("qwen"):
        assert inputs["image_grid_thw"].tolist() == [[1, IMAGE_SIZE // PATCH, IMAGE_SIZE // PATCH]]
        assert int(inputs["mm_token_type_ids"].sum()) == n_tokens
    if family == "llava_next":
        assert inputs["image_sizes"].tolist() == [[IMAGE_SIZE, IMAGE_SIZE]]
    if family.startswith("llava"):
        assert inputs["input_ids"][0, 0] == built["processor"].tokenizer.bos_token_id


def test_forward_hidden_states(built):
    inputs, out, config = built["inputs"], built["out"], built["config"]
    assert len(out.hidden_states) == TEXT_LAYERS + 1
    seq = inputs["input_ids"].shape[1]
    assert all(h.shape == (1, seq, config.text_config.hidden_size) for h in out.hidden_states)
    assert out.logits.shape == (1, seq, config.text_config.vocab_size)
    assert torch.isfinite(out.logits).all()
    # the image changes the output: the image features really were spliced in
    other = dict(inputs, **{k: v for k, v in built["processor"](
        text=built["text"], images=Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (0, 200, 10)), return_tensors="pt"
    ).items() if k in ("pixel_values",)})
    with torch.no_grad():
        assert not torch.allclose(built["model"](**other).logits, out.logits)


def test_same_seed_same_weights_and_round_trip_logits(built, tmp_path):
    family, path = built["family"], built["path"]
    again = build_tiny(family, tmp_path / "again", seed=0, **BUILD_KW)
    other = build_tiny(family, tmp_path / "other", seed=1, **BUILD_KW)
    w0, w0b, w1 = (load_file(p / "model.safetensors") for p in (path, again, other))
    assert w0.keys() == w0b.keys() == w1.keys()
    assert all(torch.equal(w0[k], w0b[k]) for k in w0)
    assert not all(torch.equal(w0[k], w1[k]) for k in w0)
    assert json.loads((path / "tokenizer.json").read_text()) == json.loads((again / "tokenizer.json").read_text())

    # the in-memory model equals the saved-and-loaded one
    tok = built["processor"].tokenizer
    fresh = make_model(family, vocab_size=len(tok), **special_token_ids(family, tok), text_layers=TEXT_LAYERS,
                       image_size=IMAGE_SIZE, patch_size=PATCH, seed=0)
    with torch.no_grad():
        assert torch.equal(fresh(**built["inputs"]).logits, built["out"].logits)


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_train_tokenizer_kinds(kind):
    tok = train_tokenizer(CORPUS, vocab_size=300, kind=kind, special_tokens=SPECIAL_TOKENS["qwen2_vl"])
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    ids = tok.encode("<|vision_start|><|image_pad|><|vision_end|>Does this image show an animal?", add_special_tokens=False)
    assert ids[:3] == tok.convert_tokens_to_ids(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>"])
    assert tok.unk_token_id not in ids
    assert "animal" in tok.decode(ids, skip_special_tokens=True)
    assert len(tok) <= 300


def test_tokenizer_kinds_differ_and_lowercase():
    words = "Does this picture feature a plane?"
    toks = {k: train_tokenizer(CORPUS, kind=k).tokenize(words) for k in ("bpe", "wordpiece", "unigram")}
    assert len({tuple(t) for t in toks.values()}) == 3
    low = train_tokenizer(CORPUS, lowercase=True)
    assert low.encode("YES", add_special_tokens=False) == low.encode("yes", add_special_tokens=False)
    with pytest.raises(ValueError):
        train_tokenizer(CORPUS, kind="char")


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError):
        build_tiny("blip2", tmp_path)
    with pytest.raises(TypeError):
        build_tiny("llava", tmp_path, hiden=64)
    with pytest.raises(ValueError):  # llava-next's any-res packing needs CLIP's CLS dropped
        build_tiny("llava_next", tmp_path, vision_feature_select_strategy="full")


def test_llava_full_strategy_keeps_cls(tmp_path):
    path = build_tiny("llava", tmp_path, vision_feature_select_strategy="full", **BUILD_KW)
    processor, model = AutoProcessor.from_pretrained(path), MODEL_CLASSES["llava"].from_pretrained(path)
    text = processor.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    inputs = processor(text=text, images=Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE)), return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == EXPECTED_IMAGE_TOKENS["llava"] + 1
    with torch.no_grad():
        model(**inputs)  # raises if image tokens and image features disagree
