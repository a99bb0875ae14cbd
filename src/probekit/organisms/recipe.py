"""The organism recipe: four phases, each a step, the way LLaVA-style MLLMs are built.

1. **vision** — the vision tower (CLIP ViT for llava, Qwen2-VL's ViT for qwen2_vl) is pretrained to
   classify train-split images of both domains (20 classes) through a throwaway linear head, then
   frozen (the role CLIP's contrastive pretraining plays for LLaVA);
2. **lm** — the decoder (embeddings, blocks, LM head) is pretrained as a causal LM on the text corpus;
3. **align** — only the projector (llava's ``multi_modal_projector``, Qwen2-VL's patch ``merger``) is
   trained on brief captions ("a photo of a sneaker"), vision tower and decoder frozen (LLaVA stage 1);
4. **instruct** — projector + decoder are trained on (image, question, answer) examples, vision tower
   frozen (LLaVA stage 2): yes/no and 1/0 questions about the domain concepts and about classes,
   paraphrases that include paper A's anchor and its lexical/negation/format variants, and naming.

Loss in phases 3 and 4 is on the answer tokens only (the assistant turn), as in LLaVA.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..models import build
from ..prompts import messages_for
from . import corpus as corpus_mod
from .spec import (
    Recipe,  # defined without torch in spec.py (for the registry); still importable from here
)
from .tasks import image_pools, sample_batch

# ----------------------------------------------------------------------------------------------- parts

def _adapter(model):
    from ..models import ADAPTERS

    return ADAPTERS[type(model).__name__]


def parts(model) -> dict[str, list[torch.nn.Module]]:
    """The modules of each training role (the family's adapter knows them: ``training_parts``)."""
    return _adapter(model).training_parts(model)


def _trainable(model, roles: tuple[str, ...]) -> list[torch.nn.Parameter]:
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    by_role = parts(model)
    for role in roles:
        for m in by_role[role]:
            for p in m.parameters():
                p.requires_grad_(True)
                params.append(p)
    return params


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------- chat format

class Chat:
    """How a family's processor formats (image, question) prompts and answers.

    The prompt is the chat template with the generation prompt; the answer is what the template puts
    after it (llava: ' yes' then </s>; qwen2_vl: 'yes' then <|im_end|>). The answer of a yes/no
    question is read at the prompt's last position: the logits of the first tokens of
    ``prefix + answer``.
    """

    def __init__(self, processor):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        user = messages_for("Q")
        gen = processor.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
        full = processor.apply_chat_template(
            user + [{"role": "assistant", "content": [{"type": "text", "text": "XYZ"}]}], tokenize=False)
        if not full.startswith(gen) or "XYZ" not in full[len(gen):]:
            raise RuntimeError("chat template: the assistant turn does not follow the generation prompt")
        self.prefix, after = full[len(gen):].split("XYZ", 1)
        after = after.strip()
        specials = set(self.tokenizer.all_special_tokens)
        self.end_token = after if after in specials else self.tokenizer.eos_token
        self.end_id = self.tokenizer.convert_tokens_to_ids(self.end_token)
        self._prompts: dict[str, str] = {}

    def prompt(self, question: str) -> str:
        p = self._prompts.get(question)
        if p is None:
            p = self.processor.apply_chat_template(messages_for(question), add_generation_prompt=True, tokenize=False)
            self._prompts[question] = p
        return p

    def answer_ids(self, answer: str) -> list[int]:
        return self.tokenizer(self.prefix + answer, add_special_tokens=False)["input_ids"]

    def first_token(self, answer: str) -> int:
        return self.answer_ids(answer)[0]


def pil_image(pools, domain: str, i: int) -> Image.Image:
    return Image.fromarray(pools[domain].images[i]).convert("RGB")


def encode(chat: Chat, pils, questions, answers=None) -> dict:
    """Processor inputs for (image, question) prompts; with ``answers``, the answer ids (+ end token)
    are appended and ``labels`` supervise only them. Rows are right-padded."""
    enc = chat.processor(images=pils, text=[chat.prompt(q) for q in questions], return_tensors="pt", padding=True)
    if answers is None:
        return dict(enc)
    ids, mask = enc["input_ids"], enc["attention_mask"].bool()
    per_token = [k for k, v in enc.items() if torch.is_tensor(v) and v.shape[:2] == ids.shape and k != "attention_mask"]
    rows, labels, extra = [], [], {k: [] for k in per_token if k != "input_ids"}
    pad = chat.tokenizer.pad_token_id
    for b, a in enumerate(answers):
        keep = mask[b]
        ans = chat.answer_ids(a) + [chat.end_id]
        rows.append(ids[b][keep].tolist() + ans)
        labels.append([-100] * int(keep.sum()) + ans)
        for k in extra:
            extra[k].append(enc[k][b][keep].tolist() + [0] * len(ans))
    n = max(map(len, rows))
    out = {k: v for k, v in enc.items() if k not in per_token and k != "attention_mask"}
    out["input_ids"] = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
    out["attention_mask"] = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
    out["labels"] = torch.tensor([r + [-100] * (n - len(r)) for r in labels])
    for k, v in extra.items():
        out[k] = torch.tensor([r + [0] * (n - len(r)) for r in v], dtype=enc[k].dtype)
    return out


# ---------------------------------------------------------------------------------------------- phases

def optimize(name, params, steps, lr, loss_fn: Callable[[int], torch.Tensor], log, every=25) -> dict:
    """AdamW over ``params`` for ``steps`` steps of ``loss_fn(step)`` (linear warm-up over 5 %, then cosine decay to
    10 % of ``lr``; gradients clipped at norm 1), logging every ``every`` steps; returns the phase's stats."""
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warm = max(1, steps // 20)

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses, t0 = [], time.perf_counter()
    for s in range(steps):
        loss = loss_fn(s)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        losses.append(loss.item())
        if s % every == 0 or s == steps - 1:
            log(f"[{name}] step {s + 1}/{steps} loss {np.mean(losses[-every:]):.4f} ({time.perf_counter() - t0:.0f} s)")
    k = max(1, min(10, steps // 5))
    return {"steps": steps, "seconds": round(time.perf_counter() - t0, 1), "lr": lr,
            "loss_first": round(float(np.mean(losses[:k])), 4), "loss_last": round(float(np.mean(losses[-k:])), 4)}


def vision_features(model, inputs: dict) -> torch.Tensor:
    """One pooled vector per image from the vision tower's last block (the adapter's ``pooled_vision_features``)."""
    return _adapter(model).pooled_vision_features(model, inputs)


VISION_FIELDS = ("family", "seed", "vision_layers", "vision_hidden", "vision_heads", "vision_intermediate", "image_size",
                 "patch_size", "vision_steps", "vision_batch", "vision_lr", "digits_fraction")


def vision_cache_key(recipe: Recipe) -> str:
    """What phase 1 depends on: the vision tower's shape and training, the seed (the tower's initial weights come
    first in the model's construction, and the phase reseeds torch's generator, so the decoder's size changes
    neither) and the torch version."""
    from ..store import key_sha256

    return key_sha256({f: getattr(recipe, f) for f in VISION_FIELDS} | {"torch": torch.__version__, "phase": "vision/1"}, 20)


def cached_phase_vision(model, processor, recipe: Recipe, pools, rng, log, cache_dir: Path | None) -> dict:
    """Phase 1, or its result from ``cache_dir``: organisms that differ only after phase 1 (tokenizer, corpus,
    instruction data) train the same tower bit for bit, so the first run stores the tower, the random
    generators' states after the phase and its report, and later runs restore them (tested to equal a fresh
    phase 1). ``cache_dir=None`` always trains."""
    from safetensors.torch import load_file, save_file

    torch.manual_seed(recipe.seed)  # the phase's own start: its head and result do not depend on the decoder's size
    tower = parts(model)["vision"]
    path = None if cache_dir is None else Path(cache_dir) / f"vision-{vision_cache_key(recipe)}"
    if path is not None and (path / "report.json").is_file():
        state = load_file(str(path / "tower.safetensors"))
        for i, m in enumerate(tower):
            m.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == str(i)})
        meta = json.loads((path / "report.json").read_text())
        rng.bit_generator.state = meta["numpy_rng"]
        torch.set_rng_state(load_file(str(path / "torch_rng.safetensors"))["state"])
        log(f"[vision] restored from {path} (phase 1 of an earlier run with the same key)")
        return {**meta["report"], "restored_from_cache": True}
    report = phase_vision(model, processor, recipe, pools, rng, log)
    if path is not None:
        tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({f"{i}.{k}": v.detach().contiguous() for i, m in enumerate(tower) for k, v in m.state_dict().items()},
                  str(tmp / "tower.safetensors"))
        save_file({"state": torch.get_rng_state()}, str(tmp / "torch_rng.safetensors"))
        (tmp / "report.json").write_text(json.dumps({"report": report, "numpy_rng": rng.bit_generator.state}))
        if not path.exists():
            os.replace(tmp, path)
    return report


def phase_vision(model, processor, recipe: Recipe, pools, rng, log) -> dict:
    params = _trainable(model, ("vision",))
    width = vision_features(model, dict(processor.image_processor(images=[pil_image(pools, "fashion", 0)], return_tensors="pt"))).shape[-1]
    head = torch.nn.Linear(width, 20)
    params = params + list(head.parameters())

    def loss_fn(_):
        batch = sample_batch(rng, pools, recipe.vision_batch, mix={"naming": 1.0}, digits_fraction=recipe.digits_fraction)
        pils = [pil_image(pools, d, i) for d, i, _, _ in batch]
        y = torch.tensor([int(pools[d].labels[i]) + (10 if d == "digits" else 0) for d, i, _, _ in batch])
        inputs = dict(processor.image_processor(images=pils, return_tensors="pt"))
        return torch.nn.functional.cross_entropy(head(vision_features(model, inputs)), y)

    return optimize("vision", params, recipe.vision_steps, recipe.vision_lr, loss_fn, log)


def lm_token_stream(tokenizer, docs: list[str]) -> np.ndarray:
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return np.array([t for d in ids for t in (*d, eos)], dtype=np.int64)


def phase_lm(model, tokenizer, recipe: Recipe, stream: np.ndarray, rng, log) -> dict:
    params = _trainable(model, ("decoder",))
    bos, n = tokenizer.bos_token_id, recipe.lm_seq - 1

    def loss_fn(_):
        starts = rng.integers(0, len(stream) - n, recipe.lm_batch)
        x = torch.tensor(np.stack([np.concatenate([[bos], stream[s:s + n]]) for s in starts]))
        return model(input_ids=x, labels=x).loss

    return optimize("lm", params, recipe.lm_steps, recipe.lm_lr, loss_fn, log)


def _phase_mm(name, model, chat, recipe, pools, rng, log, roles, steps, batch, lr, mix) -> dict:
    params = _trainable(model, roles)

    def loss_fn(_):
        ex = sample_batch(rng, pools, batch, mix=mix, digits_fraction=recipe.digits_fraction)
        inputs = encode(chat, [pil_image(pools, d, i) for d, i, _, _ in ex], [q for *_, q, _ in ex], [a for *_, a in ex])
        return model(**inputs).loss

    return optimize(name, params, steps, lr, loss_fn, log)


# --------------------------------------------------------------------------------------------- train

def build_tokenizer(recipe: Recipe):
    docs = corpus_mod.build_corpus(recipe.tokenizer_corpus, recipe.corpus_chars)
    tok = build.train_tokenizer(docs, vocab_size=recipe.vocab_size, kind=recipe.tokenizer_kind,
                                special_tokens=build.SPECIAL_TOKENS[recipe.family], lowercase=recipe.lowercase,
                                add_bos_token=recipe.family in build.LLAVA_FAMILIES)
    return tok, corpus_mod.corpus_stats(docs)


def build_untrained(recipe: Recipe, tokenizer):
    processor = build.make_processor(recipe.family, tokenizer, image_size=recipe.image_size,
                                     patch_size=recipe.patch_size)
    model = build.make_model(
        recipe.family, vocab_size=len(tokenizer), **build.special_token_ids(recipe.family, tokenizer),
        text_layers=recipe.text_layers, hidden=recipe.hidden, heads=recipe.heads, kv_heads=recipe.kv_heads,
        intermediate=recipe.intermediate, vision_layers=recipe.vision_layers, vision_hidden=recipe.vision_hidden,
        vision_heads=recipe.vision_heads, vision_intermediate=recipe.vision_intermediate,
        image_size=recipe.image_size, patch_size=recipe.patch_size, seed=recipe.seed,
        max_position_embeddings=512,
    )
    return model, processor


def run_recipe(recipe: Recipe, log=print, vision_cache: Path | None = None) -> tuple[object, object, dict]:
    """Train per ``recipe``; returns (model, processor, report with per-phase stats and timing). ``vision_cache``:
    a folder where phase 1's result is shared between organisms with the same :func:`vision_cache_key`."""
    t0, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    tokenizer, tok_stats = build_tokenizer(recipe)
    log(f"[tokenizer] {recipe.tokenizer_kind} vocab {len(tokenizer)} on {recipe.tokenizer_corpus} {tok_stats}")
    model, processor = build_untrained(recipe, tokenizer)
    chat = Chat(processor)
    train = image_pools("train", fashion_limit=None, seed=recipe.seed)
    lm_docs = corpus_mod.build_corpus(recipe.lm_corpus, recipe.corpus_chars)
    stream = lm_token_stream(tokenizer, lm_docs)
    prep = round(time.perf_counter() - t0, 1)
    log(f"[lm corpus] {recipe.lm_corpus}: {len(stream)} tokens; setup {prep} s; {count_parameters(model):,} parameters")
    model.train()
    phases = {"setup": {"seconds": prep}}
    phases["vision"] = cached_phase_vision(model, processor, recipe, train, rng, log, vision_cache)
    phases["lm"] = phase_lm(model, tokenizer, recipe, stream, rng, log)
    phases["align"] = _phase_mm("align", model, chat, recipe, train, rng, log, ("projector",),
                                recipe.align_steps, recipe.align_batch, recipe.align_lr, None)
    instruct_pools = image_pools("train", fashion_limit=recipe.instruct_images, seed=recipe.seed)
    phases["instruct"] = _phase_mm("instruct", model, chat, recipe, instruct_pools, rng, log, ("projector", "decoder"),
                                   recipe.instruct_steps, recipe.instruct_batch, recipe.instruct_lr,
                                   dict(recipe.instruct_mix))
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    model.generation_config.eos_token_id = chat.end_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    report = {
        "phases": phases,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "train_cpu_seconds": round(time.process_time() - c0, 1),
        "torch_threads": torch.get_num_threads(),
        "parameters": count_parameters(model),
        "tokenizer": {"kind": recipe.tokenizer_kind, "vocab": len(tokenizer), "corpus": recipe.tokenizer_corpus,
                      **tok_stats},
        "lm_corpus": {"source": recipe.lm_corpus, "tokens": int(len(stream)),
                      **corpus_mod.corpus_stats(lm_docs)},
        "answer_format": {"prefix": chat.prefix, "end_token": chat.end_token},
        "instruct_fashion_images": len(instruct_pools["fashion"]),
        "instruct_digit_images": len(instruct_pools["digits"]),
    }
    return model, processor, report


def save(model, processor, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def write_metadata(out_dir: Path, recipe: Recipe, report: dict) -> None:
    (Path(out_dir) / "organism.json").write_text(json.dumps({"recipe": recipe.to_dict(), **report}, indent=1) + "\n")
