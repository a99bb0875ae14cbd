"""smol-llava's projector training and :func:`finalize` (build, checks, fingerprint, card)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ..card import sha256_file as _sha256
from .assembly import adapt, assemble, build_smol_llava, projector_state_dict
from .card import write_card
from .checks import conversion_checks, fingerprint, text_only_answers
from .constants import FT_NAME, LORA, LORA_FILE_NAME, NAME, shipped

# ------------------------------------------------------------------------------- training (held-out prompts)

LM_MODES = {"frozen": NAME, "lora": FT_NAME}
STAGE1_MIX = {"caption": 0.5, "naming": 0.5}
STAGE2_MIX = {"concept_yn": 0.25, "concept_10": 0.2, "concept_tf": 0.05, "class_yn": 0.2, "naming": 0.3}


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


def _stage_examples(rng, pools, n, mix, digits_fraction, paired=False):
    """``n`` (domain, index, question, answer) from the training bank (:mod:`probekit.organisms.tasks`): the
    mix's kinds, with 'caption' for LLaVA stage 1's brief captions; ``paired``: as pairs that share a question and
    differ in the answer (:func:`probekit.organisms.tasks.sample_pairs`)."""
    from ..tasks import sample_batch, sample_pairs

    if paired:
        return sample_pairs(rng, pools, n, mix=mix, digits_fraction=digits_fraction)
    kinds = list(mix)
    p = np.array([mix[k] for k in kinds], float)
    counts = rng.multinomial(n, p / p.sum())
    out = []
    for kind, c in zip(kinds, counts):
        if c:
            out += sample_batch(rng, pools, int(c), mix=None if kind == "caption" else {kind: 1.0},
                                digits_fraction=digits_fraction)
    return [out[i] for i in rng.permutation(len(out))]


def dev_check(model, processor, *, per_class: int = 10, log=print) -> dict:
    """Answer accuracy on the **dev** half (the split for training decisions) on every probe prompt and on the
    dev-only wordings (:func:`probekit.prompts.dev_wordings`), so a decision cannot favour the probe wordings."""
    from ..evaluate import evaluate

    return evaluate(model, processor, split="dev", per_class=per_class, naming=False, paraphrases=False,
                    dev_only=True, log=log)


def _dev_min(res: dict) -> float:
    """The lowest accuracy of a dev check, over domains, probe prompts and dev-only wordings."""
    return min(v for d in res.values() for v in [*d.values(), *(d.get("dev_wordings") or {}).values()]
               if isinstance(v, float))


class KeptWeights:
    """The weights of the best check so far: :meth:`offer` a check's score after ``step`` steps (a copy is taken
    when it is at least the best so far, so the last of equal scores wins), :meth:`restore` copies them back."""

    def __init__(self, params):
        self.params, self.score, self.step, self._state = list(params), float("-inf"), None, None

    def offer(self, step: int, score: float) -> bool:
        if score < self.score:
            return False
        self.score, self.step = score, step
        self._state = [p.detach().clone() for p in self.params]
        return True

    def restore(self) -> int | None:
        """Put the kept weights back into the parameters; the step they are from (``None``: nothing was offered)."""
        import torch

        if self._state is not None:
            with torch.no_grad():
                for p, v in zip(self.params, self._state):
                    p.copy_(v)
        return self.step


# The settings of the shipped runs (the defaults, so `probekit train-organism NAME` repeats them). The pair differs
# in the LM alone: both ran the same stages, steps, learning rates, mix and seed.
SETTINGS = {
    "frozen": {"align_steps": 80, "instruct_steps": 800, "instruct_lr": 1e-3, "digits_fraction": 0.5, "dev_every": 100,
               "paired": True},
    "lora": {"align_steps": 80, "instruct_steps": 800, "instruct_lr": 1e-3, "digits_fraction": 0.5, "dev_every": 100,
             "paired": True},
}
AUTOCAST = "bfloat16"  # forward passes of training under torch.autocast (CPU); weights, optimiser and checks in float32


def train_smol_llava(out_dir, *, lm: str = "frozen", seed: int = 0, align_steps: int | None = None,
                     instruct_steps: int | None = None, batch: int = 16, align_lr: float = 2e-3,
                     instruct_lr: float | None = None, digits_fraction: float | None = None,
                     dev_every: int | None = None, paired: bool | None = None, dev_per_class: int = 10,
                     dev_stop: float = 0.97,
                     test_per_class: int = 20, autocast: str | None = AUTOCAST, threads: int | None = None,
                     log=print) -> dict:
    """LLaVA's two stages on this organism, on the question bank from which paper A's probe prompts are held
    out (:func:`probekit.organisms.tasks.probe_wordings`):

    1. **align**: the projector alone (DINOv2 and SmolLM2 frozen) on brief captions and naming;
    2. **instruct**: the bank's mix (concept and class questions in yes/no, 1/0 and true/false, naming) with the
       projector trained and SmolLM2 either frozen (``lm='frozen'``: ``smol-llava``) or fine-tuned through LoRA
       adapters (``lm='lora'``: ``smol-llava-ft``; :data:`LORA`, via peft), as LLaVA-1.5 fine-tunes its LLM.

    Every ``dev_every`` steps of stage 2 (and after its last step) the probe prompts and the dev-only wordings
    (:func:`probekit.prompts.dev_wordings`) are scored on the dev half (``dev_per_class`` per class). The training
    decisions, all taken on dev: training stops early once every one of them on both domains reaches ``dev_stop``;
    otherwise the weights of the check with the highest dev minimum are kept (the last of equal ones). Stage 2's
    batches are pairs (``paired``; :func:`probekit.organisms.tasks.sample_pairs`). Then the test half is scored once
    (``test_per_class`` per class, with the bank's own wordings beside the probe prompts) for the card. Forward
    passes run under ``torch.autocast`` in ``autocast`` (``None``: float32); every check is in float32.
    Writes ``projector.safetensors`` (+ ``lm_lora.safetensors``) and ``training.json`` into ``out_dir``. Steps and
    learning rates left ``None`` are those of the shipped run (:data:`SETTINGS`)."""
    import torch
    from safetensors.torch import save_file

    from .. import recipe as recipe_mod
    from ..recipe import Chat, encode, pil_image
    from ..tasks import image_pools

    if lm not in LM_MODES:
        raise ValueError(f"lm must be one of {sorted(LM_MODES)}, got {lm!r}")
    align_steps = SETTINGS[lm]["align_steps"] if align_steps is None else align_steps
    instruct_steps = SETTINGS[lm]["instruct_steps"] if instruct_steps is None else instruct_steps
    instruct_lr = SETTINGS[lm]["instruct_lr"] if instruct_lr is None else instruct_lr
    digits_fraction = SETTINGS[lm]["digits_fraction"] if digits_fraction is None else digits_fraction
    dev_every = SETTINGS[lm]["dev_every"] if dev_every is None else dev_every
    paired = SETTINGS[lm]["paired"] if paired is None else paired
    if autocast not in (None, "bfloat16"):
        raise ValueError(f"autocast must be 'bfloat16' or None (float32), got {autocast!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    load_start = os.getloadavg()[0]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model, processor = assemble(None, seed=seed, log=log)
    setup = time.perf_counter() - t0
    chat = Chat(processor)
    pools = image_pools("train", seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    projector = list(model.model.multi_modal_projector.parameters())
    for p in projector:
        p.requires_grad_(True)
    model.train()

    def loss_for(mix, pairs=False):
        def loss_fn(_):
            ex = _stage_examples(rng, pools, batch, mix, digits_fraction, pairs)
            inputs = encode(chat, [pil_image(pools, d, i) for d, i, _, _ in ex], [q for *_, q, _ in ex],
                            [a for *_, a in ex])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast is not None):
                return _answer_loss(model, inputs)
        return loss_fn

    stages = {"align": recipe_mod.optimize("align", projector, align_steps, align_lr, loss_for(STAGE1_MIX), log, every=10)}
    params = list(projector)
    peft_model = None
    if lm == "lora":
        peft_model = adapt(model)  # injects the adapters into ``model`` in place
        adapters = [p for n, p in model.named_parameters() if "lora_" in n]
        for p in adapters:
            p.requires_grad_(True)
        for p in projector:
            p.requires_grad_(True)
        params += adapters
        log(f"[instruct] LoRA r={LORA['r']} on SmolLM2's projections: {sum(p.numel() for p in adapters):,} parameters")
    dev_history = []
    stop = {"reason": "max steps"}
    kept = KeptWeights(params)

    base = loss_for(STAGE2_MIX, paired)

    class _EarlyStop(Exception):
        pass

    def check(s):
        model.eval()
        with torch.no_grad():
            res = dev_check(model, processor, per_class=dev_per_class, log=log)
        model.train()
        dev_history.append({"step": s, "min": _dev_min(res), "dev": res})
        kept.offer(s, _dev_min(res))
        if _dev_min(res) >= dev_stop:
            stop.update(reason=f"every probe prompt and dev-only wording >= {dev_stop} on dev", step=s)
            raise _EarlyStop

    def loss_fn(s):
        if s and dev_every and s % dev_every == 0:
            check(s)
        return base(s)

    t_inst = time.perf_counter()
    try:
        stages["instruct"] = recipe_mod.optimize("instruct", params, instruct_steps, instruct_lr, loss_fn, log, every=10)
        if dev_every:
            check(instruct_steps)
    except _EarlyStop:
        stages["instruct"] = {"steps": stop["step"], "planned_steps": instruct_steps,
                              "seconds": round(time.perf_counter() - t_inst, 1), "lr": instruct_lr}
    stages["instruct"]["stopped"] = stop
    if kept.restore() is not None:  # the weights of the best dev check (the stopping one, if it stopped)
        stages["instruct"]["kept"] = {
            "step": kept.step, "dev_min": kept.score,
            "rule": "the check with the highest dev minimum over probe prompts and dev-only wordings"}
        log(f"[instruct] kept the weights of step {kept.step} (dev minimum {kept.score:.3f})")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    files = {}
    save_file(projector_state_dict(model), str(out_dir / "projector.safetensors"),
              metadata={"organism": LM_MODES[lm], "seed": str(seed)})
    files["projector"] = "projector.safetensors"
    if peft_model is not None:
        from peft import get_peft_model_state_dict

        state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
        save_file(state, str(out_dir / "lm_lora.safetensors"), metadata={"organism": LM_MODES[lm], "seed": str(seed)})
        files["lm_lora"] = "lm_lora.safetensors"
    train_seconds = time.perf_counter() - t0
    report = {
        "organism": LM_MODES[lm], "lm": lm, "seed": seed, "batch": batch, "digits_fraction": digits_fraction,
        "align": {"steps": align_steps, "lr": align_lr, "mix": STAGE1_MIX},
        "instruct": {"planned_steps": instruct_steps, "lr": instruct_lr, "mix": STAGE2_MIX, "paired": paired,
                     "lora": LORA if lm == "lora" else None},
        "stages": stages, "autocast": autocast, "dev_every": dev_every, "dev_per_class": dev_per_class, "dev_stop": dev_stop,
        "dev_history": dev_history, "setup_seconds": round(setup, 1),
        "train_seconds": round(train_seconds, 1), "train_cpu_seconds": round(time.process_time() - c0, 1),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2), "cores": os.cpu_count()},
        "train_images": {"fashion": len(pools["fashion"]), "digits": len(pools["digits"])},
        "trained_parameters": sum(p.numel() for p in params), "test_per_class": test_per_class,
        "files": {k: {"file": v, "sha256": _sha256(out_dir / v)} for k, v in files.items()},
    }
    (out_dir / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    log(f"[train] {train_seconds:.0f} s; scoring the test half ({test_per_class} per class)")
    t = time.perf_counter()
    from ..evaluate import evaluate

    report["held_out"] = evaluate(model, processor, split="test", per_class=test_per_class, bank=True, log=log)
    report["eval_seconds"] = round(time.perf_counter() - t, 1)
    (out_dir / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def finalize(name: str, run_dir, out_dir=None, *, log=print) -> dict:
    """Ship a finished run of ``name``: copy its weights and ``training.json`` from ``run_dir`` into
    ``shipped/<name>/``, build the model from them (``out_dir``, default the cache), run the conversion checks on
    the build, write ``fingerprint.json`` and the card. Returns the checks."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    run_dir, dest = Path(run_dir), shipped(name)
    report = json.loads((run_dir / "training.json").read_text())
    if report["organism"] != name or "held_out" not in report:
        raise ValueError(f"{run_dir}: not a finished run of {name} (organism {report.get('organism')!r}; "
                         "held-out numbers written last)")
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("projector.safetensors", LORA_FILE_NAME):
        if (dest / f).exists():
            (dest / f).unlink()
    trained = 0
    for entry in report["files"].values():
        src = run_dir / entry["file"]
        if _sha256(src) != entry["sha256"]:
            raise ValueError(f"{src}: sha256 differs from the run's report; the run folder was changed")
        shutil.copy(src, dest / entry["file"])
        trained += sum(v.numel() for v in load_file(str(src)).values())
    t = time.perf_counter()
    path = build_smol_llava(out_dir, name=name, log=log, force=True)
    build_seconds = time.perf_counter() - t
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)
    checks = conversion_checks(model) if name == NAME else None  # smol-llava-ft's SmolLM2 is no longer the GGUF's
    held = report["held_out"]
    if any("bank_wordings" not in m for m in held.values()):  # a run from before the seen-wording control: a measurement
        from ..evaluate import evaluate                        # on the same test images, no decision rests on it

        log("[finalize] scoring the bank's own wordings on the test half (the seen-wording control)")
        extra = evaluate(model, processor, split="test", per_class=report.get("test_per_class", 20), naming=False,
                         paraphrases=False, bank=True, log=log)
        for key, m in extra.items():
            held[key]["bank_wordings"] = m["bank_wordings"]
    report["text_only"] = text_only_answers(model, processor)
    report["parameters"] = sum(p.numel() for p in model.parameters())
    report["trained_parameters"] = trained
    report.setdefault("test_per_class", report["held_out"][next(iter(report["held_out"]))]["n"] // 10)
    report["build_seconds"] = round(build_seconds, 1)
    if checks is not None:
        report["conversion_checks"] = checks
    (dest / "fingerprint.json").write_text(json.dumps(fingerprint(model, processor), indent=1) + "\n")
    (dest / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    write_card(report, checks, build_seconds, name=name)
    shutil.copy(dest / "README.md", path / "README.md")
    return checks or {}


def record_replicate(name: str, run_dir, *, log=print) -> dict:
    """Record a finished run of ``name``'s recipe with another seed as a **seed replicate** of the shipped one:
    its seed, where stage 2 stopped and its test-half numbers go into ``shipped/<name>/training.json``
    (``replicates``) and the card; its weights are not shipped. The run must use the shipped run's settings."""
    run_dir, dest = Path(run_dir), shipped(name)
    run = json.loads((run_dir / "training.json").read_text())
    report = json.loads((dest / "training.json").read_text())
    if run.get("organism") != name or "held_out" not in run:
        raise ValueError(f"{run_dir}: not a finished run of {name}")
    keys = ("batch", "digits_fraction", "align", "instruct", "autocast", "dev_every", "dev_per_class", "dev_stop",
            "test_per_class")
    differs = [k for k in keys if run.get(k) != report.get(k)]
    if differs or run["seed"] == report["seed"]:
        raise ValueError(f"{run_dir}: a replicate differs from the shipped run in the seed alone; it differs in "
                         f"{differs or 'nothing (same seed)'}")
    entry = {"seed": run["seed"], "stopped": run["stages"]["instruct"]["stopped"],
             "kept": run["stages"]["instruct"].get("kept"),
             "dev_history_min": [(h["step"], h["min"]) for h in run["dev_history"]],
             "train_seconds": run["train_seconds"], "train_cpu_seconds": run["train_cpu_seconds"],
             "held_out": {k: {m: v for m, v in d.items() if m != "naming_examples"} for k, d in run["held_out"].items()},
             "weights_sha256": {k: v["sha256"] for k, v in run["files"].items()}}
    report["replicates"] = [r for r in report.get("replicates", []) if r["seed"] != run["seed"]] + [entry]
    (dest / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    write_card(report, report.get("conversion_checks"), report.get("build_seconds"), name=name)
    log(f"[replicate] {name} seed {run['seed']} recorded in {dest / 'training.json'}")
    return entry
