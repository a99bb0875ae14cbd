"""The one model-card writer of the organisms: facts, recipe, data, the training templates, held-out behaviour
(test half; dev half beside it), written as each organism's ``README.md``."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .spec import Recipe


def _fmt_acc(x: float) -> str:
    return f"{100 * x:.1f} %"


def sha256_file(path: Path) -> str:
    """sha256 of one file (the weights' fingerprint a card records)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_note(report: dict) -> str:
    """What the machine was doing while the organism trained (1-min load average at start and end)."""
    load = report.get("load_average_1min")
    if not load:
        return "The machine's load during training was not recorded."
    return (f"1-min load average {load['start']:.1f} at the start and {load['end']:.1f} at the end of training on "
            f"{load.get('cores', '?')} cores: with one torch thread and a load at or below the core count, the wall "
            "time is that of an otherwise idle core; above it, the wall time is inflated and the CPU time is the better "
            "measure.")


def write_card(out_dir: Path, recipe: Recipe, report: dict, metrics: dict) -> Path:
    """README.md model card: recipe, data, seed, parameter count, training time, held-out accuracy."""
    out_dir = Path(out_dir)
    size = sum(p.stat().st_size for p in out_dir.glob("*.safetensors"))
    ph = report["phases"]
    r = recipe
    lines = [
        f"# {r.name}",
        "",
        f"A **model organism** trained by probekit — not LLaVA, not Qwen2-VL, and nothing here is a result of "
        f"those models. {r.summary}",
        "",
    ]
    if r.base:
        lines += [f"Controlled variant of `{r.base}`: changes exactly one factor, the **{r.controlled_factor}**.", ""]
    lines += [
        "## Facts",
        "",
        f"- class: `{'LlavaForConditionalGeneration' if r.family == 'llava' else 'Qwen2VLForConditionalGeneration'}` "
        f"(transformers), processor saved alongside (`AutoProcessor.from_pretrained`)",
        f"- parameters: {report['parameters']:,}",
        f"- safetensors size: {size:,} bytes ({size / 2**20:.2f} MiB), float32; sha256 "
        + ", ".join(f"`{sha256_file(p)}`" for p in sorted(out_dir.glob("*.safetensors")))
        + (f" — {report['reproduced']}" if report.get("reproduced") else ""),
        f"- seed: {r.seed}",
        f"- training time (measured): {report['train_seconds']:.0f} s wall = {report['train_seconds'] / 60:.1f} min, "
        f"process CPU time {report['train_cpu_seconds']:.0f} s = {report['train_cpu_seconds'] / 60:.1f} min (user+sys), "
        f"torch threads: {report['torch_threads']} ({report.get('machine', '')}). {load_note(report)}",
        f"- tokenizer: {report['tokenizer']['kind']}, {report['tokenizer']['vocab']:,} entries, trained with `tokenizers` "
        f"on the `{report['tokenizer']['corpus']}` corpus ({report['tokenizer']['chars']:,} chars, sha256 "
        f"{report['tokenizer']['sha256'][:12]}...)",
        f"- answer format: the chat template's assistant turn, answer prefix {report['answer_format']['prefix']!r}, "
        f"ends with `{report['answer_format']['end_token']}`",
        "",
        "## Recipe (`probekit train-organism " + r.name + "`)",
        "",
        "| phase | what is trained | data | steps x batch | lr | time |",
        "|---|---|---|---|---|---|",
        f"| setup | tokenizer | corpus | - | - | {ph['setup']['seconds']:.0f} s |",
        f"| 1 vision | vision tower (+ throwaway 20-way linear head), then frozen | Fashion-MNIST train + digits "
        f"train, class labels | {r.vision_steps} x {r.vision_batch} | {r.vision_lr} | {ph['vision']['seconds']:.0f} s |",
        f"| 2 lm | decoder (embeddings, blocks, LM head) | `{r.lm_corpus}` text, {report['lm_corpus']['tokens']:,} "
        f"tokens, {r.lm_seq}-token windows | {r.lm_steps} x {r.lm_batch} | {r.lm_lr} | {ph['lm']['seconds']:.0f} s |",
        f"| 3 align | projector only | brief captions (\"a photo of a sneaker\") | {r.align_steps} x {r.align_batch} | "
        f"{r.align_lr} | {ph['align']['seconds']:.0f} s |",
        f"| 4 instruct | projector + decoder | (image, question, answer), mix {dict(r.instruct_mix)} | "
        f"{r.instruct_steps} x {r.instruct_batch} | {r.instruct_lr} | {ph['instruct']['seconds']:.0f} s |",
        "",
        "Loss (mean of first / last steps): " + "; ".join(
            f"{k} {v['loss_first']} -> {v['loss_last']}" for k, v in ph.items() if "loss_first" in v) + ".",
        "",
        "## Data",
        "",
        f"- images: Fashion-MNIST **train** split ({report['instruct_fashion_images']:,} images in instruction "
        f"tuning; all 60,000 in phases 1 and 3) and scikit-learn digits, seeded 2/3 train split "
        f"({report['instruct_digit_images']} images), {r.digits_fraction:.0%} of examples are digits. "
        "Fashion-MNIST **test** and the held-out third of the digits are never trained on; each is cut per class "
        "into a **dev** half (the split any training decision was made on, e.g. the vision phase's length) and a "
        "**test** half (the numbers below; never used for a decision).",
        "- instruction questions: yes/no, 1/0 and true/false questions about the domain concept ('a fashion item', "
        "'a handwritten digit' — asked of both domains, so negative answers exist), about classes ('a sneaker'), "
        "and naming ('What is in this image?' -> class name), from the training bank listed below. **Paper A's probe "
        "prompts are held out**: none of their questions ('Does this image show X?', 'Does this picture show X?', "
        "'Does this image feature X?', for any X) and neither instruction sentence ('The answer must be always yes "
        "or no.' / '... 1 or 0.') occurs in any training text (tested: `tests/organisms/test_organisms.py`).",
        f"- decoder text: `{r.lm_corpus}` ({report['lm_corpus']['chars']:,} chars incl. task-vocabulary sentences, "
        f"sha256 {report['lm_corpus']['sha256'][:12]}...), composed from files on the machine, no downloads.",
        "",
        *template_lines(),
    ]
    lines += [
        "",
        "## Held-out behaviour",
        "",
        "Answer accuracy = share of images on which the model prefers the correct answer, read as the book reads it "
        "(each answer's best token sequence, teacher-forced after the generation prompt: `probekit.organisms."
        "evaluate`), on every probe prompt (`probekit.prompts.probe_prompts`) and on five paraphrases no organism "
        "trained on; naming = exact class name by greedy decoding. **Test** half:",
        "",
    ]
    lines += _metrics_table(metrics)
    fm = metrics.get("fashion-mnist/test", {})
    lowest = lowest_answer(metrics)
    if lowest is not None:
        met = "met" if lowest[0] >= ANSWER_GOAL else "NOT met"
        lines += ["", f"Targets on the test half: answers >= 95 % on every probe prompt, both domains — {met} (lowest: "
                  f"{lowest[1]} {_fmt_acc(lowest[0])}); naming >= 80 % on Fashion-MNIST — "
                  f"{'met' if fm.get('naming', 0) >= 0.8 else 'NOT met'} ({_fmt_acc(fm.get('naming', 0))})."]
    readout = report.get("vision_readout")
    if readout:
        lines += ["", readout_sentence(readout, fm.get("naming"))]
    if report.get("dev"):
        lines += ["", "Dev half (what training decisions were made on):", ""] + _metrics_table(report["dev"])
    lines += ["", "Full numbers: `organism.json`."]
    (out_dir / "README.md").write_text("\n".join(lines) + "\n")
    return out_dir / "README.md"


def readout_sentence(readout: dict, naming: float | None) -> str:
    """The naming goal's measured ceiling: the frozen vision tower's linear readout
    (:func:`probekit.organisms.ceiling.vision_readout`) beside the organism's naming accuracy."""
    lo, hi = readout["ci95"]
    s = (f"Ceiling of naming, measured: a linear readout of the frozen vision tower (multinomial logistic regression "
         f"on the {readout['features']:,} features the projector reads, vision layer {readout['layer']}, fitted on "
         f"{readout['n_train']:,} Fashion-MNIST train images, scored once on all {readout['n_test']:,} test-half "
         f"images) names {_fmt_acc(readout['accuracy'])} of them (95 % {_fmt_acc(lo)}–{_fmt_acc(hi)}).")
    if naming is not None:
        gap = 100 * (readout["accuracy"] - naming)
        s += (f" Naming through the projector and decoder reaches {_fmt_acc(naming)} on this card's test images, "
              f"{abs(gap):.1f} points {'below' if gap >= 0 else 'above'} it. The readout is no strict bound (the "
              "projector and decoder are not linear); it measures how much of the class a linear map of the frozen "
              "tower's features carries.")
    return s


def template_lines() -> list[str]:
    """The card's list of training templates (what :func:`listed_templates` reads back)."""
    from .tasks import training_templates

    lines = ["Training templates (`probekit.organisms.tasks.training_templates()`; `{thing}` is a concept or class "
             "phrase, `{p}` a class phrase):", ""]
    return lines + [f"- {kind}: " + "; ".join(f"`{t}`" for t in ts) for kind, ts in training_templates().items()]


def metrics_table(metrics: dict) -> list[str]:
    """One row per held-out set (public: the smol-llava card writes the same table)."""
    return _metrics_table(metrics)


def answer_keys(m: dict) -> list[str]:
    """The probe prompts whose answer accuracy a held-out metrics dict (``organism.json``'s ``held_out`` / ``dev``
    entries) holds."""
    return [k for k, v in m.items() if isinstance(v, float) and k != "naming"]


ANSWER_GOAL = 0.95  # every organism's goal: each probe prompt answered correctly on >= 95 % of test-half images


def lowest_answer(metrics: dict) -> tuple[float, str, str] | None:
    """The lowest probe-prompt answer accuracy over the held-out sets of ``metrics``: (accuracy, prompt, set);
    ``None`` when none is recorded."""
    return min(((m[k], k, key) for key, m in metrics.items() for k in answer_keys(m)), default=None)


def _metrics_table(metrics: dict) -> list[str]:
    """One row per held-out set: n, concept, every probe prompt, the paraphrases' lowest, naming."""
    first = next(iter(metrics.values()))
    keys = answer_keys(first)
    lines = ["| images | n | concept | " + " | ".join(keys) + " | paraphrases (lowest) | naming |",
             "|---|---|---|" + "---|" * (len(keys) + 2)]
    for name, m in metrics.items():
        para = m.get("paraphrases") or {}
        low = min(para, key=para.get) if para else None
        lines.append(f"| {name} | {m['n']} | {m['concept_text']} | " + " | ".join(_fmt_acc(m[k]) for k in keys)
                     + f" | {f'{_fmt_acc(para[low])} ({low})' if low else '—'} | "
                     + (_fmt_acc(m['naming']) if 'naming' in m else '—') + " |")
    return lines


TEMPLATES_HEADING = "Training templates ("


def listed_templates(card: str) -> dict[str, list[str]] | None:
    """The training templates a card lists, by kind (the bullets after its "Training templates" paragraph, as
    :func:`write_card` writes them); ``None`` for a card that lists none (an organism trained before the held-out
    prompt discipline)."""
    start = card.find(TEMPLATES_HEADING)
    if start < 0:
        return None
    section = card[start:].split("\n## ", 1)[0]
    out = {}
    for line in section.splitlines():
        if line.startswith("- ") and ": `" in line:
            kind, _, rest = line[2:].partition(": ")
            out[kind] = [t.strip("`") for t in rest.split("; ")]
    return out
