"""smol-llava assembled: processor, LLaVA config, the two parts joined by the projector, built once into probekit's cache (deterministic; rebuilt when its inputs change)."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

from ...errors import ModelLoadError
from ..card import sha256_file as _sha256
from .constants import (
    BUILD_VERSION,
    CHAT_TEMPLATE,
    IMAGE_SIZE,
    IMAGE_TOKEN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LLM_DIST,
    LORA,
    NAME,
    PATCH_SIZE,
    VISION_DIST,
    VISION_FEATURE_LAYER,
    check_name,
    lora_file,
    projector_file,
)
from .parts import (
    default_build_dir,
    load_dinov2,
    load_smollm2,
    no_init,
    wheel_file,
    wheel_version,
)

# --------------------------------------------------------------------------------------------- assembly

def make_processor(tokenizer):
    """``LlavaProcessor``: DINOv2's normalisation at 56 x 56 px (``BitImageProcessor``, DINOv2's own
    processor class, without its 224-px centre crop) + SmolLM2's tokenizer with ``<image>`` added."""
    from transformers import BitImageProcessor, LlavaProcessor
    from transformers.image_utils import PILImageResampling

    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
    image_processor = BitImageProcessor(
        do_resize=True, size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, resample=PILImageResampling.BICUBIC,
        do_center_crop=False, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_convert_rgb=True,
    )
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH_SIZE,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE, image_token=IMAGE_TOKEN)


def llava_config(text_config, vision_config, image_token_id: int, vocab_size: int):
    from transformers import LlavaConfig

    text = text_config.to_dict()
    text["vocab_size"] = vocab_size
    cfg = LlavaConfig(vision_config=vision_config.to_dict(), text_config=text, image_token_id=image_token_id,
                      projector_hidden_act="gelu", vision_feature_select_strategy="default",
                      vision_feature_layer=VISION_FEATURE_LAYER, image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
                      multimodal_projector_bias=True, tie_word_embeddings=bool(text_config.tie_word_embeddings))
    cfg.architectures = ["LlavaForConditionalGeneration"]
    cfg.dtype = "float32"
    return cfg


def lora_config():
    """smol-llava-ft's adapters (:data:`~.constants.LORA`) as a peft ``LoraConfig``."""
    from peft import LoraConfig

    return LoraConfig(bias="none", **LORA)


def adapt(model):
    """``model`` wrapped by peft with smol-llava-ft's adapters injected in place (``model`` itself stays usable).
    peft 0.21 asks transformers 5 ``is_gradient_checkpointing``, which warns of its rename: that one warning of
    a third party's call is silenced here, nothing else."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora_config())


def merge_lora(model, lora_state: dict):
    """``model`` with smol-llava-ft's LoRA delta (a peft adapter state dict) merged into SmolLM2's weights: the
    same class, no peft layers left (peft's ``merge_and_unload``)."""
    from peft import set_peft_model_state_dict

    peft_model = adapt(model)
    result = set_peft_model_state_dict(peft_model, lora_state)
    if result.unexpected_keys:
        raise ModelLoadError(f"smol-llava-ft: LM delta keys the adapters do not have: {result.unexpected_keys[:3]}")
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ModelLoadError(f"smol-llava-ft: LM delta lacks adapter weights {missing[:3]}")
    return peft_model.merge_and_unload()


def assemble(projector_state: dict | None = None, *, seed: int = 0, log=print, lora_state: dict | None = None):
    """``(LlavaForConditionalGeneration, LlavaProcessor)`` from the two installed wheels.

    ``projector_state`` (keys ``linear_1.weight`` ...) fills the projector; without it the projector is
    freshly initialised from ``seed`` (the start of training). ``lora_state`` (smol-llava-ft) is merged into
    SmolLM2 (:func:`merge_lora`). The image token's embedding row is the mean of SmolLM2's embedding rows
    (deterministic; the row is replaced by image features anyway)."""
    import torch
    from transformers import LlavaForConditionalGeneration

    t = time.perf_counter()
    vision = load_dinov2()
    log(f"[{NAME}] DINOv2-S/14 from {VISION_DIST}'s ONNX ({time.perf_counter() - t:.0f} s)")
    llm, tokenizer = load_smollm2()
    log(f"[{NAME}] SmolLM2-135M-Instruct from {LLM_DIST}'s GGUF, dequantized ({time.perf_counter() - t:.0f} s)")
    processor = make_processor(tokenizer)
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    vocab = len(tokenizer)
    config = llava_config(llm.config, vision.config, image_token_id, vocab)

    with no_init():
        model = LlavaForConditionalGeneration(config)
    emb = llm.model.embed_tokens.weight.detach()
    extra = vocab - emb.shape[0]
    if extra > 0:
        emb = torch.cat([emb, emb.mean(0, keepdim=True).expand(extra, -1)], 0)
    sd = {f"model.vision_tower.{k}": v for k, v in vision.state_dict().items()}
    sd.update({f"model.language_model.{k[len('model.'):]}": v for k, v in llm.state_dict().items()
               if k.startswith("model.")})
    sd["model.language_model.embed_tokens.weight"] = emb.clone()
    sd["lm_head.weight"] = sd["model.language_model.embed_tokens.weight"]
    if projector_state is None:
        gen = torch.Generator().manual_seed(seed)
        projector_state = {}
        d_in, d_out = config.vision_config.hidden_size, config.text_config.hidden_size
        for name, (fi, fo) in (("linear_1", (d_in, d_out)), ("linear_2", (d_out, d_out))):
            bound = 1 / math.sqrt(fi)  # nn.Linear's default init, seeded
            projector_state[f"{name}.weight"] = (torch.rand(fo, fi, generator=gen) * 2 - 1) * bound
            projector_state[f"{name}.bias"] = (torch.rand(fo, generator=gen) * 2 - 1) * bound
    sd.update({f"model.multi_modal_projector.{k}": v.float() for k, v in projector_state.items()})
    model.load_state_dict(sd, strict=True, assign=True)
    model.tie_weights()
    for name, buf in model.named_buffers():
        if buf.is_meta:
            raise RuntimeError(f"{NAME}: buffer {name} was not materialised")
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    if lora_state is not None:
        model = merge_lora(model, lora_state)
    return model.eval(), processor


def projector_state_dict(model) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.model.multi_modal_projector.state_dict().items()}


def load_projector(path: Path | None = None, name: str = NAME) -> dict:
    """A trained projector (default: ``name``'s shipped one); also reads smol-llava-ft's LM delta file."""
    from safetensors.torch import load_file

    path = projector_file(name) if path is None else Path(path)
    if not path.is_file():
        raise ModelLoadError(
            f"{name}: the trained weights {path} are missing; re-run the recipe with `probekit train-organism {name}`"
        )
    return load_file(str(path))


# ------------------------------------------------------------------------------------------------ build

def _build_stamp(projector: Path, lora: Path | None, name: str) -> dict:
    return {
        "name": name, "build_version": BUILD_VERSION,
        "wheels": {d: wheel_version(d) for d in (LLM_DIST, VISION_DIST)},
        "projector_sha256": _sha256(projector),
        "lm_delta_sha256": None if lora is None else _sha256(lora),
    }


def cached_build(out_dir=None, projector: Path | None = None, *, name: str = NAME) -> Path | None:
    """The cached build directory if it is complete and was built from these wheels and weights."""
    check_name(name)
    out = Path(out_dir) if out_dir is not None else default_build_dir(name)
    projector = projector_file(name) if projector is None else Path(projector)
    lora = lora_file(name)
    stamp = out / "smol-llava-build.json"
    if not (stamp.is_file() and (out / "config.json").is_file() and any(out.glob("*.safetensors"))):
        return None
    try:
        have = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if not projector.is_file() or (lora is not None and not lora.is_file()):
        return None
    want = _build_stamp(projector, lora, name)
    return out if all(have.get(k) == v for k, v in want.items()) else None


def build_smol_llava(out_dir=None, *, name: str = NAME, log=print, projector: Path | str | None = None,
                     force: bool = False) -> Path:
    """Rebuild the full model ``name`` (smol-llava, or smol-llava-ft with its LM delta merged) from the installed
    wheels + the committed weights and ``save_pretrained`` model and processor into ``out_dir`` (default
    ``$PROBEKIT_CACHE/organisms/<name>``, i.e. ``~/.cache/probekit/organisms/<name>``). A complete build of the
    same wheels and weights is reused unless ``force``. Deterministic: no random numbers enter. Raises
    ``ModelLoadError`` with the pip command when a wheel is missing."""
    check_name(name)
    out = Path(out_dir) if out_dir is not None else default_build_dir(name)
    projector = projector_file(name) if projector is None else Path(projector)
    lora = lora_file(name)
    for dist in (LLM_DIST, VISION_DIST):
        wheel_file(dist)
    if not force and (hit := cached_build(out, projector, name=name)) is not None:
        return hit
    t = time.perf_counter()
    state = load_projector(projector, name)
    lora_state = None if lora is None else load_projector(lora, name)
    model, processor = assemble(state, log=log, lora_state=lora_state)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    stamp = _build_stamp(projector, lora, name)
    stamp["build_seconds"] = round(time.perf_counter() - t, 1)
    (tmp / "smol-llava-build.json").write_text(json.dumps(stamp, indent=1) + "\n")
    card = projector.parent / "README.md"
    if card.is_file():
        shutil.copy(card, tmp / "README.md")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log(f"[{name}] built {out} in {time.perf_counter() - t:.0f} s")
    return out
