"""Stand-ins of real checkpoints: the real text side (tokenizer behaviour, chat template, processor configs) of a
hub model on tiny random weights of its real transformers class, saved as a ``save_pretrained`` directory that
``probekit.models.load_model(dir)`` loads like the hub folder.

    d = llava15_standin("out/llava15")                       # llava-hf/llava-1.5-7b-hf's text side
    d = qwen2vl_standin("out/qwen2vl", "qwen2_vl", files="tests/fixtures/real-text-side/qwen2-vl")

What is real and what is made up, per builder:

- :func:`llava15_standin`. Real: LLaVA-1.5-hf's chat template (its ``chat_template.json``, verbatim), its
  preprocessor config (CLIP: 336 px shortest edge, 336 center crop, bicubic, CLIP mean/std) and processor config
  (patch 14, ``default`` feature selection, one extra CLS token: 576 image tokens per image), the tokenizer
  *class and configuration* (``LlamaTokenizer``, which transformers 5 rebuilds from vocab + merges as BPE with byte
  fallback and a ``▁`` Metaspace prepended to the first word, ``add_bos_token``, ``legacy=False``), the id layout
  (``<unk>``=0 ``<s>``=1 ``</s>``=2, ``<0x00>``..``<0xFF>``=3..258, ``▁▁``=259, ``<image>`` and ``<pad>`` right
  after the vocabulary, the embedding padded to a multiple of 64 as 32002 -> 32064), and the classes
  (``LlavaForConditionalGeneration``, CLIP vision at 336 px / patch 14, Llama decoder). Made up: the vocabulary
  itself (about a thousand pieces trained here like SentencePiece: words start with ``▁``, letters and
  punctuation apart, digits always single tokens, so " 1" is ``▁``,``1`` as under Llama-2), the sizes and weights.
- :func:`qwen2vl_standin`. Real: everything of the text side, read from the files passed in (the Qwen2-VL /
  Qwen2.5-VL vocab, merges, tokenizer config, chat template, preprocessor config with min_pixels 3136), the
  vocab size and special-token ids of the 7B configs, the classes. Made up: the sizes and weights.
- :func:`llama3_llava_next_standin`. Real: llava-hf/llama3-llava-next-8b-hf's chat template, Llama-3's
  pre-tokenizer regex (byte-level, digits in groups of up to three), ``ignore_merges``, its 256 special tokens
  (``<|begin_of_text|>``, ``<|start_header_id|>``, ``<|eot_id|>``, ...) after the vocabulary, ``<|begin_of_text|>``
  added on encoding, LLaVA-NeXT's CLIP-336 any-res image processor. Made up: the vocabulary (byte-level BPE
  trained here), hence the ids (the specials sit at V.. instead of 128000..), sizes and weights.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from .build import CORPUS, MODEL_CLASSES, make_config

# ---- LLaVA-1.5 (llava-hf/llava-1.5-7b-hf) ----------------------------------------------------------------------

LLAVA15_CHAT_TEMPLATE = (  # chat_template.json of llava-hf/llava-1.5-7b-hf, verbatim
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
LLAVA15_PREPROCESSOR = {  # preprocessor_config.json of llava-hf/llava-1.5-7b-hf
    "crop_size": {"height": 336, "width": 336}, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True,
    "do_rescale": True, "do_resize": True, "image_mean": CLIP_MEAN, "image_processor_type": "CLIPImageProcessor",
    "image_std": CLIP_STD, "processor_class": "LlavaProcessor", "resample": 3, "rescale_factor": 1 / 255,
    "size": {"shortest_edge": 336},
}
LLAVA15_PROCESSOR = {  # processor_config.json of llava-hf/llava-1.5-7b-hf
    "image_token": "<image>", "num_additional_image_tokens": 1, "patch_size": 14, "processor_class": "LlavaProcessor",
    "vision_feature_select_strategy": "default",
}
BYTE_TOKENS = tuple(f"<0x{i:02X}>" for i in range(256))

# More text for the stand-in vocabularies: the book's questions on its datasets, class names, digits, answers
# written after a colon (so "yes"/"no" also exist without a word-start marker, as in Llama-2's vocabulary).
EXTRA_CORPUS = (
    "Does this image show a fashion item? The answer must be always yes or no.",
    "Does this picture feature a handwritten digit? The answer must be always 1 or 0.",
    "Does this image show a handwritten digit? Answer yes or no. Does it show a fashion item? Answer 1 or 0.",
    "A T-shirt/top, a trouser, a pullover, a dress, a coat, a sandal, a shirt, a sneaker, a bag, an ankle boot.",
    "zero one two three four five six seven eight nine 0 1 2 3 4 5 6 7 8 9 10 42 100 2024",
    "USER:yes ASSISTANT:no Answer:Yes Answer:No (yes) (no) [1] [0] \"yes\" \"no\" 'Yes' 'No'",
    "Yes, it does. No, it does not. Yes it is. No it is not. Yes. No. YES NO",
    "It is a photo of clothing, shoes or a bag; it is not a number written by hand.",
    "Please describe the image in detail. What color is the item? Where is it? Which class is it?",
)


def _training_texts(extra=()) -> list[str]:
    return [t for t in (*CORPUS, *EXTRA_CORPUS, *extra)]


def llama2_style_tokenizer(texts=None, *, vocab_size: int = 1200):
    """A ``tokenizers.Tokenizer`` in the format of llava-1.5-hf's ``tokenizer.json`` (Llama-2's SentencePiece model
    converted by transformers: BPE with byte fallback and fused ``<unk>``, normalizer "prepend ``▁``, spaces to
    ``▁``", no pre-tokenizer, ``<s>`` added in front, decoder ``▁`` -> space, bytes, strip one leading space), on a
    vocabulary trained here the way Llama-2's was built: pieces start with ``▁`` or not at all, letters and
    punctuation never share a piece, digits are always single pieces (split_digits), every byte has a ``<0xNN>``
    piece, newlines are bytes (``<0x0A>``), and ``▁▁`` is the first merge. Ids: ``<unk>``=0, ``<s>``=1,
    ``</s>``=2, bytes 3..258, ``▁▁``=259, then the trained pieces, as in Llama-2."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    texts = [t.replace("\n", " ") for t in (texts or _training_texts())]  # "\n" stays a byte, as in Llama-2
    train = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    train.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    train.pre_tokenizer = pre_tokenizers.Split(Regex(r"▁?\p{L}+|▁?[^\p{L}\p{N}▁]+|\p{N}|▁+"), behavior="isolated")
    alphabet = [chr(c) for c in range(33, 127)] + ["▁"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", *BYTE_TOKENS],
                                  initial_alphabet=alphabet, show_progress=False)
    train.train_from_iterator(texts, trainer=trainer)
    model = json.loads(train.to_str())["model"]
    pieces = sorted(model["vocab"], key=model["vocab"].get)
    vocab = {p: i for i, p in enumerate(pieces[:259] + ["▁▁"] + [p for p in pieces[259:] if p != "▁▁"])}
    merges = [("▁", "▁")] + [tuple(m) for m in model["merges"] if tuple(m) != ("▁", "▁")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.post_processor = processors.TemplateProcessing(single="<s>:0 $A:0", pair="<s>:0 $A:0 <s>:1 $B:1",
                                                       special_tokens=[("<s>", 1)])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    return tok


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _save_model(family: str, config, out_dir: Path, seed: int, *, tokenizer_len: int) -> None:
    torch.manual_seed(seed)
    model = MODEL_CLASSES[family](config).to(torch.float32).eval()
    if model.get_input_embeddings().num_embeddings < tokenizer_len:
        raise ValueError(f"vocab_size {config.text_config.vocab_size} < the tokenizer's {tokenizer_len} tokens")
    model.save_pretrained(out_dir)


def _added(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def llava15_standin(out_dir, *, text_layers: int = 2, hidden: int = 32, vision_layers: int = 2,
                    vision_hidden: int = 32, seed: int = 0, vocab_size: int = 1200) -> Path:
    """Save a stand-in of llava-hf/llava-1.5-7b-hf to ``out_dir``: the hub folder's files (tokenizer.json,
    tokenizer_config.json, special_tokens_map.json, added_tokens.json, preprocessor_config.json,
    processor_config.json, chat_template.json) in their hub format, the trained vocabulary in place of Llama-2's,
    and a tiny random ``LlavaForConditionalGeneration`` (CLIP vision 336 px / patch 14, Llama decoder)."""
    from tokenizers import AddedToken
    from transformers import AutoProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = llama2_style_tokenizer(vocab_size=vocab_size)
    base = tok.get_vocab_size()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<image>", "<pad>")])
    image_id, pad_id = tok.token_to_id("<image>"), tok.token_to_id("<pad>")
    assert (image_id, pad_id) == (base, base + 1), (image_id, pad_id, base)
    tok.save(str(out / "tokenizer.json"))
    specials = {"<unk>": 0, "<s>": 1, "</s>": 2, "<image>": image_id, "<pad>": pad_id}
    _write_json(out / "tokenizer_config.json", {  # llava-1.5-hf's, with this vocabulary's ids
        "add_bos_token": True, "add_eos_token": False, "add_prefix_space": None,
        "added_tokens_decoder": {str(i): _added(t) for t, i in specials.items()},
        "bos_token": "<s>", "clean_up_tokenization_spaces": False, "eos_token": "</s>",
        "extra_special_tokens": {"image_token": "<image>"}, "image_token": "<image>", "legacy": False,
        "model_max_length": 1000000000000000019884624838656, "pad_token": "<pad>", "padding_side": "left",
        "processor_class": "LlavaProcessor", "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
        "trust_remote_code": False, "unk_token": "<unk>", "use_default_system_prompt": False})
    _write_json(out / "special_tokens_map.json", {
        k: {kk: v for kk, v in _added(t).items() if kk != "special"}
        for k, t in (("bos_token", "<s>"), ("eos_token", "</s>"), ("pad_token", "<pad>"), ("unk_token", "<unk>"))})
    _write_json(out / "added_tokens.json", {"<image>": image_id, "<pad>": pad_id})
    _write_json(out / "preprocessor_config.json", LLAVA15_PREPROCESSOR)
    _write_json(out / "processor_config.json", LLAVA15_PROCESSOR)
    _write_json(out / "chat_template.json", {"chat_template": LLAVA15_CHAT_TEMPLATE})

    config = make_config(  # the real embedding is padded to a multiple of 64: 32002 tokens, vocab_size 32064
        "llava", vocab_size=64 * math.ceil((pad_id + 1) / 64), image_token_id=image_id, pad_token_id=pad_id,
        bos_token_id=1, eos_token_id=2, text_layers=text_layers, hidden=hidden, heads=4, kv_heads=4,
        intermediate=2 * hidden, max_position_embeddings=4096, vision_layers=vision_layers,
        vision_hidden=vision_hidden, image_size=336, patch_size=14, vision_feature_select_strategy="default",
        vision_feature_layer=-2)
    config.text_config.rms_norm_eps = 1e-5
    _save_model("llava", config, out, seed, tokenizer_len=pad_id + 1)
    AutoProcessor.from_pretrained(out)  # loads as transformers loads the hub folder, or fails here
    return out


# ---- Qwen2-VL / Qwen2.5-VL ---------------------------------------------------------------------------------------

QWEN_IDS = {  # the 7B configs' vocab size and special-token ids
    "qwen2_vl": dict(vocab_size=151936, bos_token_id=151643, eos_token_id=151645, image_token_id=151655,
                     video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653),
    "qwen2_5_vl": dict(vocab_size=152064, bos_token_id=151643, eos_token_id=151645, image_token_id=151655,
                       video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653),
}
QWEN_TEXT_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "added_tokens.json",
                   "special_tokens_map.json", "chat_template.json", "preprocessor_config.json")


def qwen2vl_standin(out_dir, family: str = "qwen2_vl", *, files, vocab_files=None, text_layers: int = 2,
                    hidden: int = 32, vision_layers: int = 2, vision_hidden: int = 32, seed: int = 0) -> Path:
    """Save a stand-in of Qwen2-VL-7B-Instruct (``family="qwen2_vl"``) or Qwen2.5-VL-7B-Instruct (``"qwen2_5_vl"``).

    ``files``: a folder with the model's real text-side files (tokenizer_config.json, chat_template.json,
    preprocessor_config.json; vocab.json and merges.txt here or in ``vocab_files``, the family's shared BPE). They
    are copied into ``out_dir`` as they are, so the processor loads exactly as from the hub folder; the model is the
    real class with the real vocab size and special-token ids and tiny random weights.
    """
    from transformers import AutoProcessor

    if family not in QWEN_IDS:
        raise ValueError(f"family must be one of {tuple(QWEN_IDS)}, got {family!r}")
    files, vocab_files = Path(files), Path(vocab_files or files)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in QWEN_TEXT_FILES:
        src = (vocab_files if name in ("vocab.json", "merges.txt") else files) / name
        if src.is_file():
            shutil.copyfile(src, out / name)
        elif name in ("vocab.json", "merges.txt", "tokenizer_config.json", "chat_template.json",
                      "preprocessor_config.json"):
            raise FileNotFoundError(f"{src} is missing: a Qwen stand-in needs the real {name}")
    processor = AutoProcessor.from_pretrained(out)
    tok = processor.tokenizer
    ids = dict(QWEN_IDS[family])
    for key, token in (("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
                       ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>")):
        if tok.convert_tokens_to_ids(token) != ids[key]:
            raise ValueError(f"{files}: {token} is {tok.convert_tokens_to_ids(token)}, not {family}'s {ids[key]}")
    config = make_config(family, pad_token_id=tok.pad_token_id, text_layers=text_layers, hidden=hidden, heads=4,
                         kv_heads=2, intermediate=2 * hidden, max_position_embeddings=32768,
                         vision_layers=vision_layers, vision_hidden=vision_hidden, patch_size=14, merge_size=2,
                         image_size=56, **ids)
    _save_model(family, config, out, seed, tokenizer_len=len(tok))
    return out


# ---- Llama-3 in LLaVA-NeXT (llava-hf/llama3-llava-next-8b-hf) ------------------------------------------------------

LLAMA3_PATTERN = (  # Llama-3's pre-tokenizer regex (Meta's tokenizer.py; cl100k's): digits in groups of up to three
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_SPECIALS = (  # the 256 special tokens after Llama-3's vocabulary, in Meta's order
    "<|begin_of_text|>", "<|end_of_text|>", *(f"<|reserved_special_token_{i}|>" for i in range(4)),
    "<|start_header_id|>", "<|end_header_id|>", "<|reserved_special_token_4|>", "<|eot_id|>",
    *(f"<|reserved_special_token_{i}|>" for i in range(5, 251)),
)
LLAMA3_LLAVA_NEXT_CHAT_TEMPLATE = (  # llava-hf/llama3-llava-next-8b-hf's chat template
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>' }}{% endfor %}{# Render all text next #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ '\n' + content['text'] + '<|eot_id|>' }}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAVA_NEXT_PREPROCESSOR = {  # LLaVA-NeXT's (llava-v1.6) CLIP-336 any-res image processor config
    "aspect_ratio_setting": "anyres", "crop_size": {"height": 336, "width": 336}, "do_center_crop": True,
    "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
    "image_grid_pinpoints": [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]], "image_mean": CLIP_MEAN,
    "image_processor_type": "LlavaNextImageProcessor", "image_std": CLIP_STD, "processor_class": "LlavaNextProcessor",
    "resample": 3, "rescale_factor": 1 / 255, "size": {"shortest_edge": 336},
}


def llama3_style_tokenizer(texts=None, *, vocab_size: int = 1500):
    """A ``tokenizers.Tokenizer`` shaped like Llama-3's ``tokenizer.json``: byte-level BPE (tiktoken-style,
    ``ignore_merges``) behind Llama-3's split regex, ByteLevel decoder, ``<|begin_of_text|>`` added in front, the
    256 special tokens after the vocabulary; the vocabulary is trained here on the stand-in corpus."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    train = Tokenizer(models.BPE())
    train.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    train.train_from_iterator([*(texts or _training_texts()), "Answer:\n\nyes\n\nno\n\n1\n\n0"], trainer=trainer)
    model = json.loads(train.to_str())["model"]
    tok = Tokenizer(models.BPE(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], ignore_merges=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    bos = len(model["vocab"])
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIALS])
    assert tok.token_to_id("<|begin_of_text|>") == bos
    return tok


def llama3_llava_next_standin(out_dir, *, text_layers: int = 2, hidden: int = 32, vision_layers: int = 2,
                              vision_hidden: int = 32, seed: int = 0, vocab_size: int = 1500) -> Path:
    """Save a stand-in of llava-hf/llama3-llava-next-8b-hf: Llama-3-shaped tokenizer (trained vocabulary), its chat
    template, LLaVA-NeXT's any-res processor, tiny ``LlavaNextForConditionalGeneration``. ``<image>`` and ``<pad>``
    follow the special tokens; the embedding is padded to a multiple of 64 (128320 in the real config)."""
    from tokenizers import AddedToken
    from transformers import AutoProcessor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = llama3_style_tokenizer(vocab_size=vocab_size)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<image>", "<pad>")])
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in (*LLAMA3_SPECIALS, "<image>", "<pad>")}
    _write_json(out / "tokenizer_config.json", {
        "added_tokens_decoder": {str(i): _added(t) for t, i in ids.items()}, "bos_token": "<|begin_of_text|>",
        "clean_up_tokenization_spaces": True, "eos_token": "<|eot_id|>", "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 8192, "pad_token": "<pad>", "padding_side": "left", "processor_class": "LlavaNextProcessor",
        "tokenizer_class": "PreTrainedTokenizerFast"})
    _write_json(out / "preprocessor_config.json", LLAVA_NEXT_PREPROCESSOR)
    _write_json(out / "processor_config.json", {**LLAVA15_PROCESSOR, "processor_class": "LlavaNextProcessor"})
    _write_json(out / "chat_template.json", {"chat_template": LLAMA3_LLAVA_NEXT_CHAT_TEMPLATE})
    config = make_config(
        "llava_next", vocab_size=64 * math.ceil((ids["<pad>"] + 1) / 64), image_token_id=ids["<image>"],
        pad_token_id=ids["<pad>"], bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|eot_id|>"],
        text_layers=text_layers, hidden=hidden, heads=4, kv_heads=1, intermediate=2 * hidden,
        max_position_embeddings=8192, vision_layers=vision_layers, vision_hidden=vision_hidden, image_size=336,
        patch_size=14, vision_feature_layer=-2, image_grid_pinpoints=LLAVA_NEXT_PREPROCESSOR["image_grid_pinpoints"])
    config.text_config.rms_norm_eps = 1e-5
    config.text_config.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    _save_model("llava_next", config, out, seed, tokenizer_len=ids["<pad>"] + 1)
    AutoProcessor.from_pretrained(out)
    return out
