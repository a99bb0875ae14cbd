"""Offline construction of small random-weight multimodal LLMs of real transformers classes.

Everything is built from configs (no downloads): a tokenizer trained with the `tokenizers`
library, the family's real processor + image processor, and the family's real
``*ForConditionalGeneration`` class with seeded random weights. ``build_tiny`` wires them
together consistently and saves them with ``save_pretrained`` so that the directory loads back
through ``AutoProcessor`` / ``AutoConfig`` / the model class, exactly like a Hub checkpoint.

    path = build_tiny("llava", "out/tiny-llava")

Bigger organisms use the same functions with larger sizes, e.g.
``build_tiny("qwen2_vl", d, image_size=224, patch_size=14, hidden=256, text_layers=8, ...)``.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    trainers,
)
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,  # transformers 5: alias of TokenizersBackend
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl")
LLAVA_FAMILIES = ("llava", "llava_next")
QWEN_FAMILIES = ("qwen2_vl", "qwen2_5_vl")

MODEL_CLASSES = {
    "llava": LlavaForConditionalGeneration,
    "llava_next": LlavaNextForConditionalGeneration,
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
}

# Base special tokens every trained tokenizer has, at ids 0..3 (pad, bos, eos, unk).
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
_LLAVA_SPECIALS = ("<image>",)
_QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
SPECIAL_TOKENS = {"llava": _LLAVA_SPECIALS, "llava_next": _LLAVA_SPECIALS, "qwen2_vl": _QWEN_SPECIALS, "qwen2_5_vl": _QWEN_SPECIALS}
IMAGE_TOKEN = {"llava": "<image>", "llava_next": "<image>", "qwen2_vl": "<|image_pad|>", "qwen2_5_vl": "<|image_pad|>"}

CORPUS = (
    "Does this image show an animal? The answer must be always yes or no.",
    "Does this picture feature a plane? Answer yes or no.",
    "Does the image show a dog? yes",
    "Does the picture show a cat? no",
    "Is there an animal in this image? Answer with 1 or 0.",
    "Is there a plane in the picture? 1",
    "Is there a car in the image? 0",
    "What is in this image? A dog is in this image.",
    "What is in the picture? A plane is in the picture.",
    "What does this image show? It shows an animal on the grass.",
    "The answer must be yes. The answer must be no. The answer is always yes or no.",
    "The answer is 1 or 0. The answer must always be 1 or 0.",
    "This image does not show an animal. This picture does not feature a plane.",
    "Say yes if the image shows a bird, or no if it does not.",
    "A photo of a dog, a cat, a bird, a horse, a fish, a plane, a car, a boat or a truck.",
    "You are a helpful assistant. Answer the question about the image.",
    "USER: Does this image feature an animal? ASSISTANT: yes",
    "USER: Does this picture show a plane? ASSISTANT: no",
    "Question: is it an animal or a plane? Answer: an animal.",
    "Yes, no, 1, 0, true, false, always, never, must, should, the, a, an, or, and, in, on, of, is, it.",
    "USER: What is in this picture?\nASSISTANT: a plane\nUSER: Is it an animal?\nASSISTANT: no\n",
    "system\nuser\nassistant\nsystem\nuser\nassistant\n",
)

_LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
_QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _check_family(family: str, vision_feature_select_strategy: str = "default") -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if vision_feature_select_strategy not in ("default", "full") or (
        family == "llava_next" and vision_feature_select_strategy != "default"
    ):  # llava-next's any-res packing only works once CLIP's CLS token is dropped
        raise ValueError(f"vision_feature_select_strategy {vision_feature_select_strategy!r} is not supported for {family}")


def train_tokenizer(
    texts: Iterable[str],
    *,
    vocab_size: int = 1000,
    kind: str = "bpe",
    special_tokens: Sequence[str] = (),
    lowercase: bool = False,
    add_bos_token: bool = False,
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on ``texts`` and wrap it as a transformers tokenizer.

    ``kind``: 'bpe' (byte-level BPE, never produces <unk>), 'wordpiece' or 'unigram' (so two
    organisms can differ only in tokenizer). Ids 0..3 are <pad>, <s>, </s>, <unk>; then
    ``special_tokens`` (e.g. ``SPECIAL_TOKENS[family]``), all atomic special tokens.
    ``add_bos_token`` prepends <s> on encoding (as llava's Llama tokenizer does).
    """
    specials = [PAD, BOS, EOS, UNK, *dict.fromkeys(t for t in special_tokens if t not in (PAD, BOS, EOS, UNK))]
    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        )
    elif kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials)
    elif kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token=UNK)
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'bpe', 'wordpiece' or 'unigram'")
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.train_from_iterator(list(texts), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        extra_special_tokens=specials[4:],
        add_bos_token=add_bos_token,
        add_eos_token=False,
    )


def special_token_ids(family: str, tokenizer) -> dict[str, int]:
    """The token-id keyword arguments of ``make_model`` for ``family``, read off ``tokenizer``."""
    _check_family(family)
    ids = tokenizer.convert_tokens_to_ids
    out = {
        "image_token_id": ids(IMAGE_TOKEN[family]),
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if family in QWEN_FAMILIES:
        out.update(
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )
    unknown = [k for k, v in out.items() if v is None or (v == tokenizer.unk_token_id and k != "pad_token_id")]
    if unknown:
        raise ValueError(f"tokenizer lacks the {family} special tokens for {unknown}; train it with SPECIAL_TOKENS[{family!r}]")
    return out


def chat_template(family: str) -> str:
    """Jinja chat template shaped like llava-1.5-hf's ('USER: <image>\\n... ASSISTANT:') or
    Qwen2-VL's ('<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>...<|im_end|>')."""
    _check_family(family)
    return _LLAVA_TEMPLATE if family in LLAVA_FAMILIES else _QWEN_TEMPLATE


def grid_pinpoints(image_size: int) -> list[list[int]]:
    """Default llava-next any-res grid: one tile, two tiles tall, two tiles wide."""
    s = image_size
    return [[s, s], [s, 2 * s], [2 * s, s]]


def make_processor(
    family: str,
    tokenizer,
    *,
    image_size: int,
    patch_size: int,
    merge_size: int = 2,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    vision_feature_select_strategy: str = "default",
    image_grid_pinpoints: list[list[int]] | None = None,
):
    """The family's real processor + image processor around ``tokenizer`` with ``chat_template(family)``.

    llava(-next): images are resized/cropped to ``image_size`` (CLIP preprocessing); with the
    'default' strategy the CLS token is dropped, so llava gives (image_size/patch_size)**2 tokens.
    qwen: ``min_pixels = max_pixels = image_size**2`` by default, so an image_size x image_size image
    gives (image_size/patch_size/merge_size)**2 tokens (other shapes keep ~the same pixel count).
    """
    _check_family(family, vision_feature_select_strategy)
    template = chat_template(family)
    if family in LLAVA_FAMILIES:
        image_kw = dict(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
        common = dict(
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy=vision_feature_select_strategy,
            num_additional_image_tokens=1,  # CLIP's CLS token
            image_token=IMAGE_TOKEN[family],
            chat_template=template,
        )
        if family == "llava":
            return LlavaProcessor(image_processor=CLIPImageProcessor(**image_kw), **common)
        pinpoints = image_grid_pinpoints or grid_pinpoints(image_size)
        return LlavaNextProcessor(
            image_processor=LlavaNextImageProcessor(image_grid_pinpoints=pinpoints, **image_kw), **common
        )
    factor = patch_size * merge_size
    if image_size % factor:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size*merge_size = {factor}")
    size = {"shortest_edge": min_pixels or image_size**2, "longest_edge": max_pixels or image_size**2}
    vision_kw = dict(patch_size=patch_size, temporal_patch_size=2, merge_size=merge_size, size=size)
    cls = Qwen2VLProcessor if family == "qwen2_vl" else Qwen2_5_VLProcessor
    return cls(
        image_processor=Qwen2VLImageProcessor(**vision_kw),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**vision_kw),
        chat_template=template,
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (t, h, w) like Qwen2-VL's [16, 24, 24] for head_dim 128."""
    half = head_dim // 2
    hw = half * 3 // 8
    return [half - 2 * hw, hw, hw]


def make_config(
    family: str,
    *,
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    video_token_id: int | None = None,
    vision_start_token_id: int | None = None,
    vision_end_token_id: int | None = None,
    text_layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 64,
    max_position_embeddings: int = 2048,
    vision_layers: int = 2,
    vision_hidden: int = 32,
    vision_heads: int | None = None,
    vision_intermediate: int | None = None,
    image_size: int = 28,
    patch_size: int = 14,
    merge_size: int = 2,
    vision_feature_select_strategy: str = "default",
    vision_feature_layer: int = -2,
    image_grid_pinpoints: list[list[int]] | None = None,
):
    """The family's real config class for a random-weight model of the given sizes."""
    _check_family(family, vision_feature_select_strategy)
    vision_heads = vision_heads or heads
    vision_intermediate = vision_intermediate or 2 * vision_hidden
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=False,
    )
    if family in LLAVA_FAMILIES:
        vision = CLIPVisionConfig(
            hidden_size=vision_hidden,
            intermediate_size=vision_intermediate,
            num_hidden_layers=vision_layers,
            num_attention_heads=vision_heads,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=hidden,
        )
        llava = dict(
            vision_config=vision,
            text_config=LlamaConfig(**text),
            image_token_index=image_token_id,
            image_seq_length=(image_size // patch_size) ** 2,
            vision_feature_select_strategy=vision_feature_select_strategy,
            vision_feature_layer=vision_feature_layer,
            pad_token_id=pad_token_id,
        )
        if family == "llava":
            return LlavaConfig(**llava)
        return LlavaNextConfig(image_grid_pinpoints=image_grid_pinpoints or grid_pinpoints(image_size), **llava)

    if None in (video_token_id, vision_start_token_id, vision_end_token_id):
        raise ValueError(f"{family} needs video_token_id, vision_start_token_id and vision_end_token_id")
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": _mrope_section(hidden // heads)}
    vision = dict(
        depth=vision_layers,
        num_heads=vision_heads,
        patch_size=patch_size,
        spatial_merge_size=merge_size,
        temporal_patch_size=2,
    )
    if family == "qwen2_vl":
        if vision_intermediate % vision_hidden:
            raise ValueError("qwen2_vl needs vision_intermediate to be a multiple of vision_hidden (mlp_ratio)")
        vision.update(embed_dim=vision_hidden, hidden_size=hidden, mlp_ratio=vision_intermediate // vision_hidden)
        cls = Qwen2VLConfig
    else:
        vision.update(
            hidden_size=vision_hidden,
            intermediate_size=vision_intermediate,
            out_hidden_size=hidden,
            window_size=4 * patch_size * merge_size,  # 112 px for Qwen2.5-VL's 14 x 2
            fullatt_block_indexes=list(range(min(vision_layers, 8) - 1, vision_layers, 8)),  # 7, 15, 23, 31 at 32
        )
        cls = Qwen2_5_VLConfig
    return cls(
        text_config=text,
        vision_config=vision,
        image_token_id=image_token_id,
        video_token_id=video_token_id,
        vision_start_token_id=vision_start_token_id,
        vision_end_token_id=vision_end_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )


def make_model(
    family: str,
    *,
    vocab_size: int,
    image_token_id: int,
    pad_token_id: int,
    text_layers: int = 2,
    hidden: int = 32,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int = 64,
    vision_layers: int = 2,
    vision_hidden: int = 32,
    image_size: int = 28,
    patch_size: int = 14,
    seed: int = 0,
    **kw,
) -> PreTrainedModel:
    """Random-weight model of the family's real class (fp32, eval mode); same seed, same weights.

    ``kw`` are further ``make_config`` options (bos/eos/video/vision_start/vision_end token ids,
    vision_heads, vision_intermediate, merge_size, image_grid_pinpoints, ...).
    """
    config = make_config(
        family,
        vocab_size=vocab_size,
        image_token_id=image_token_id,
        pad_token_id=pad_token_id,
        text_layers=text_layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        vision_layers=vision_layers,
        vision_hidden=vision_hidden,
        image_size=image_size,
        patch_size=patch_size,
        **kw,
    )
    torch.manual_seed(seed)
    return MODEL_CLASSES[family](config).to(torch.float32).eval()


def build_tiny(
    family: str,
    out_dir,
    *,
    seed: int = 0,
    image_size: int = 28,
    text_layers: int = 2,
    patch_size: int | None = None,
    tokenizer_kind: str = "bpe",
    vocab_size: int = 1000,
    corpus: Iterable[str] = CORPUS,
    **kw,
) -> Path:
    """Train a tokenizer on ``corpus``, build processor + model consistently, save both to ``out_dir``.

    ``patch_size`` defaults to image_size // 4 (llava: 16 image tokens at 28 px, llava-next 36,
    qwen 4). ``kw`` go to ``make_processor`` and/or ``make_model`` (whichever accepts them).
    """
    _check_family(family)
    patch_size = patch_size or image_size // 4
    proc_params = inspect.signature(make_processor).parameters
    model_params = set(inspect.signature(make_model).parameters) | set(inspect.signature(make_config).parameters)
    if unknown := set(kw) - set(proc_params) - model_params:
        raise TypeError(f"build_tiny got unexpected keyword arguments {sorted(unknown)}")

    tokenizer = train_tokenizer(
        corpus,
        vocab_size=vocab_size,
        kind=tokenizer_kind,
        special_tokens=SPECIAL_TOKENS[family],
        add_bos_token=family in LLAVA_FAMILIES,
    )
    processor = make_processor(
        family,
        tokenizer,
        image_size=image_size,
        patch_size=patch_size,
        **{k: v for k, v in kw.items() if k in proc_params},
    )
    model = make_model(
        family,
        vocab_size=len(tokenizer),
        **special_token_ids(family, tokenizer),
        text_layers=text_layers,
        image_size=image_size,
        patch_size=patch_size,
        seed=seed,
        **{k: v for k, v in kw.items() if k in model_params},
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
