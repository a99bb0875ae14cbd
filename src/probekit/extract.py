"""Per-layer hidden states of images x prompt variants, at the probed position, into an activation store.

For every (image, variant) the question goes through the model's own chat template with the image and the
generation prompt (``add_generation_prompt=True``), exactly as the model would be asked. The states of all
decoder layers (HF ``hidden_states``: 0 = embedding output, 1..L = blocks; the last one is after the final
norm, as transformers returns it) are read at the probed position:

- ``position="last"`` (default, paper A): the last token of the templated prompt, i.e. the position whose
  next-token distribution is the model's answer;
- ``position="image_mean"``: the mean over the image-token positions.

Prompts are batched with right padding, so every real token sits at the position it has unbatched and
attends to the same keys (causal attention never sees the pads behind it); the last real position is read
per row. Beside the states, the model's behaviour is recorded at the answer position: its greedy next
token and the logit margin between the expected answer and the other one.

Shared-prefix reuse (``reuse_prefix=True``, the default). All variants of one image share the image tokens and
the templated text around them up to where the questions first differ; under causal attention those positions
do not depend on what follows. :func:`shared_prefix` finds that longest common token prefix (which must hold
every image token), :func:`forward_shared` runs image + prefix once per image (batched over images of equal
prefix length), keeps the key/value cache and runs each variant's suffix on it (the cache is cropped back to
the prefix between variants). Family-specific positions for the suffix (Qwen2-VL's 3-D rotary ids) come from
the adapter. :func:`forward_batch` (one forward per prompt) stays the reference; both agree within float
rounding (tested per class to 1e-4 in fp32).
"""

from __future__ import annotations

import contextlib
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import ImageDataset
from .errors import ProbekitError, PromptError
from .models import LoadedModel
from .prompts import Variant, check_position, messages_for
from .store import ActivationStore


def template(lm: LoadedModel, text: str, *, prefix: str | None = None) -> str:
    """The prompt exactly as the model sees it (before image-token expansion).

    ``prefix``: text placed *before* the image (paper B). It goes first in the user turn; chat templates that
    write a turn's images before its text (LLaVA-1.5's) get it as a system message instead, which they
    render before the user turn. Either way the prefix precedes the image, or a PromptError says why not.
    """
    placeholder = lm.adapter.image_placeholder(lm.processor)
    tries = [messages_for(text, prefix=prefix)]
    if prefix:
        tries.append([{"role": "system", "content": [{"type": "text", "text": prefix}]}, *messages_for(text)])
    for messages in tries:
        try:
            out = lm.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as e:  # jinja errors surface here
            raise PromptError(f"the chat template of {lm.model_id!r} failed on {text!r}: {e}") from None
        if out.count(placeholder) != 1:
            raise PromptError(
                f"the chat template of {lm.model_id!r} wrote the image placeholder {placeholder!r} "
                f"{out.count(placeholder)} times instead of once; fix the processor's chat template"
            )
        if not prefix or -1 < out.find(prefix) < out.index(placeholder):
            return out
    raise PromptError(f"the chat template of {lm.model_id!r} does not put the text prefix {prefix!r} before the image")


def answer_token_ids(tokenizer, answer: str) -> set[int]:
    """First-token ids of the surface forms a model may use to start ``answer`` (yes, Yes, ' yes', ' Yes')."""
    ids = set()
    for form in {answer, answer.capitalize(), " " + answer, " " + answer.capitalize()}:
        toks = tokenizer.encode(form, add_special_tokens=False)
        if toks and tokenizer.decode(toks[:1]).strip():
            ids.add(toks[0])
    return ids


def answer_sets(tokenizer, variants: Sequence[Variant]) -> dict[str, tuple[list[int], list[int]]]:
    """Per variant: (token ids of the expected answer, token ids of the other answer), disjoint."""
    out = {}
    for v in variants:
        pos, neg = (answer_token_ids(tokenizer, a) for a in v.answers)
        shared = pos & neg
        pos, neg = sorted(pos - shared), sorted(neg - shared)
        if not pos or not neg:
            raise PromptError(f"variant {v.name!r}: answers {v.answers} share their first tokens; choose answers "
                              "that start differently")
        if v.expected == v.answers[1]:
            pos, neg = neg, pos
        out[v.name] = (pos, neg)
    return out


@contextlib.contextmanager
def _no_grad_eval(model):
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _to_device(lm: LoadedModel, inputs) -> dict[str, torch.Tensor]:
    inputs = {k: v.to(lm.device) for k, v in inputs.items()}
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(lm.dtype)
    return inputs


def _readout(logits: torch.Tensor, answers) -> dict[str, torch.Tensor]:
    """Greedy next token and answer margin from the logits at the answer position (one answer pair per row)."""
    logits = logits.float()
    result = {"first_token": logits.argmax(-1).cpu()}
    if answers is not None:
        pos = torch.stack([logits[b, ids].max() for b, (ids, _) in enumerate(answers)])
        neg = torch.stack([logits[b, ids].max() for b, (_, ids) in enumerate(answers)])
        result["margin"] = (pos - neg).cpu()
    return result


def _image_mean(lm: LoadedModel, input_ids: torch.Tensor, hidden_states) -> torch.Tensor:
    img = (input_ids == lm.image_token_id).unsqueeze(-1)  # [B, T, 1]
    n_img = img.sum(1).clamp(min=1)
    return torch.stack([(h * img).sum(1) / n_img for h in hidden_states], dim=1)


def forward_batch(lm: LoadedModel, prompts: Sequence[str], images: Sequence, *, position: str = "last",
                  answers: Sequence[tuple[list[int], list[int]]] | None = None) -> dict[str, torch.Tensor]:
    """One batched forward pass per prompt (the reference path). Returns ``hidden`` [B, L+1, d] at the probed
    position, ``first_token`` [B], and when ``answers`` is given (one (expected ids, other ids) pair per row)
    ``margin`` [B]."""
    check_position(position)
    inputs = lm.processor(text=list(prompts), images=list(images), padding=True, padding_side="right",
                          return_tensors="pt")
    inputs = _to_device(lm, inputs)
    mask = inputs["attention_mask"]
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)  # last real token, whatever the padding side
    with _no_grad_eval(lm.model):
        out = lm.model(**inputs, output_hidden_states=True, use_cache=False, logits_to_keep=last[:, None])
    rows = torch.arange(mask.shape[0], device=mask.device)
    if position == "last":
        hidden = torch.stack([h[rows, last] for h in out.hidden_states], dim=1)  # [B, L+1, d]
    else:
        hidden = _image_mean(lm, inputs["input_ids"], out.hidden_states)
    return {"hidden": hidden.float().cpu(), **_readout(out.logits[:, -1], answers)}


@dataclass(frozen=True)
class SharedPrefix:
    """The templated prompts of all variants as one shared token prefix (holding every image token) plus a
    non-empty token suffix per variant. The prefix length varies with the image's token count; the suffixes don't."""

    prompts: dict[str, str]
    suffixes: dict[str, tuple[int, ...]]


_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def shared_prefix(lm: LoadedModel, prompts: dict[str, str], image) -> SharedPrefix | None:
    """Split ``prompts`` (variant name -> templated prompt), as the processor tokenizes them with ``image``, at
    their longest common token prefix. ``None`` when that prefix would not hold every image token (variants
    that differ before the image), i.e. when there is nothing to reuse."""
    names = list(prompts)
    enc = lm.processor(text=[prompts[v] for v in names], images=[image] * len(names), padding=True,
                       padding_side="right", return_tensors="pt")
    ids = [row[m.bool()].tolist() for row, m in zip(enc["input_ids"], enc["attention_mask"])]
    p, shortest = 0, min(map(len, ids))
    while p < shortest - 1 and all(x[p] == ids[0][p] for x in ids):  # every suffix keeps >= 1 token
        p += 1
    img = [i for i, t in enumerate(ids[0]) if t == lm.image_token_id]
    if not img or img[-1] >= p:
        return None
    return SharedPrefix(dict(prompts), {v: tuple(x[p:]) for v, x in zip(names, ids)})


def _collate(encs: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Concatenate per-image processor outputs along dim 0, zero-padding trailing dims to the largest
    (llava-next's patch axis, as its processor does; the model reads ``image_sizes`` to skip the padding)."""
    out = {}
    for k in encs[0]:
        ts = [e[k] for e in encs]
        shape = [max(t.shape[d] for t in ts) for d in range(1, ts[0].dim())]
        pads = [F.pad(t, [x for d in reversed(range(1, t.dim())) for x in (0, shape[d - 1] - t.shape[d])]) for t in ts]
        out[k] = torch.cat(pads)
    return out


def _rewind(cache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def forward_shared(lm: LoadedModel, images: Sequence, plan: SharedPrefix, *, position: str = "last",
                   answers: dict[str, tuple[list[int], list[int]]] | None = None) -> dict[str, torch.Tensor]:
    """Every variant of ``plan`` on every image, running image + shared prefix once per image.

    Images are preprocessed once; images whose prefixes have the same length (always, for a fixed image size)
    share one prefix pass. Each variant's suffix then runs on the prefix's key/value cache, which is cropped
    back to the prefix between variants. Returns ``hidden`` [B, V, L+1, d], ``first_token`` [B, V] and, with
    ``answers`` (variant name -> (expected ids, other ids)), ``margin`` [B, V]; variants in ``plan`` order.
    """
    check_position(position)
    names = list(plan.suffixes)
    ref, s0 = names[0], len(plan.suffixes[names[0]])
    encs = []
    for image in images:
        e = lm.processor(text=[plan.prompts[ref]], images=[image], return_tensors="pt")
        ids = e["input_ids"][0]
        n = len(ids) - s0
        if tuple(ids[n:].tolist()) != plan.suffixes[ref] or (ids[n:] == lm.image_token_id).any():
            raise ProbekitError(f"{lm.model_id!r}: the processor tokenized an image's prompt differently from the "
                                "calibration image's; extract with reuse_prefix=False")
        encs.append({k: v[:, :n] if k in _SEQUENCE_KEYS else v for k, v in e.items()})
    groups = defaultdict(list)
    for i, e in enumerate(encs):
        groups[e["input_ids"].shape[1]].append(i)
    res = {k: [None] * len(images) for k in ("hidden", "first_token", "margin")}
    with _no_grad_eval(lm.model):
        for length, idx in groups.items():
            inputs = _to_device(lm, _collate([encs[i] for i in idx]))
            pre = lm.model(**inputs, use_cache=True, output_hidden_states=position == "image_mean", logits_to_keep=1)
            cache = pre.past_key_values
            mean = _image_mean(lm, inputs["input_ids"], pre.hidden_states) if position == "image_mean" else None
            per = defaultdict(list)
            for v in names:
                _rewind(cache, length)
                suffix = torch.tensor(plan.suffixes[v], device=lm.device).expand(len(idx), -1)
                pos = lm.adapter.suffix_position_ids(lm.model, inputs, suffix)
                out = lm.model(input_ids=suffix, past_key_values=cache, position_ids=pos, use_cache=True,
                               output_hidden_states=mean is None, logits_to_keep=1)
                per["hidden"].append(torch.stack([h[:, -1] for h in out.hidden_states], 1) if mean is None else mean)
                r = _readout(out.logits[:, -1], None if answers is None else [answers[v]] * len(idx))
                for k, t in r.items():
                    per[k].append(t)
            del cache, pre
            for k, ts in per.items():
                stacked = torch.stack(ts, 1)  # [g, V, ...]
                for j, i in enumerate(idx):
                    res[k][i] = stacked[j]
    return {k: torch.stack(v).float().cpu() if k == "hidden" else torch.stack(v) for k, v in res.items()
            if v[0] is not None}


def extract(lm: LoadedModel, dataset: ImageDataset, variants: Sequence[Variant], out, *, position: str = "last",
            batch_size: int = 8, storage_dtype: str = "float32", shard_size: int = 64, progress: bool = True,
            prefix: str | None = None, reuse_prefix: bool = True) -> ActivationStore:
    """Extract every layer's state at ``position`` for every image x variant into the store at ``out``.

    ``reuse_prefix`` (default): image + shared prompt prefix run once per image, variants as suffixes on the
    cached keys/values (:func:`forward_shared`; ``batch_size`` images per prefix pass); falls back, with a
    warning, to one forward per prompt when the variants differ before the image. ``reuse_prefix=False``: one
    forward per (image, variant) prompt, ``batch_size`` prompts per pass (:func:`forward_batch`, the
    reference). Both give the same numbers up to float rounding, so they share a store.

    Memory does not grow with the dataset: images are loaded, computed and written one shard at a time.
    Resumable: a store already holding some shards for the same cache key only computes the missing ones.
    """
    check_position(position)
    if len(dataset) == 0:
        raise ProbekitError(f"dataset {dataset.name!r} is empty; nothing to extract")
    if not variants:
        raise PromptError("no prompt variants given; use paper_a_variants() or a variants file")
    if batch_size < 1 or shard_size < 1:
        raise ProbekitError("batch_size and shard_size must be positive integers")
    prompts = {v.name: template(lm, v.text, prefix=prefix) for v in variants}
    answers = answer_sets(lm.tokenizer, variants)
    key = {
        "model": lm.identity(),
        "position": position,
        "prompts": prompts,
        "variants": [v.to_dict() for v in variants],
        "answer_token_ids": {k: [list(a), list(b)] for k, (a, b) in answers.items()},
        "dataset": dataset.identity(),
        "storage_dtype": storage_dtype,
    }
    store = ActivationStore.create(
        out, key=key, variants=variants, n_items=len(dataset), ids=dataset.ids, labels=dataset.labels,
        classes=dataset.classes, n_layers=lm.num_layers + 1, hidden_size=lm.hidden_size,
        storage_dtype=storage_dtype, shard_size=shard_size,
        extra={"device": str(lm.device), "model_path": lm.path, "prefix": prefix, "reuse_prefix": reuse_prefix},
    )
    todo = store.missing_shards()
    ranges = store.shard_ranges()
    names = [v.name for v in variants]
    bar = tqdm(total=sum(ranges[i][1] - ranges[i][0] for i in todo) * len(variants), disable=not progress,
               desc=f"extract {lm.model_id}", unit="prompt")
    plan = shared_prefix(lm, prompts, dataset[ranges[todo[0]][0]][0]) if reuse_prefix and todo else None
    if reuse_prefix and todo and plan is None:
        warnings.warn("the prompt variants differ before the image, so there is no shared prefix to reuse; "
                      "running one forward per prompt", stacklevel=2)
    for s in todo:
        start, stop = ranges[s]
        images = [dataset[i][0] for i in range(start, stop)]
        res = defaultdict(list)
        if plan is not None:
            for b in range(0, len(images), batch_size):
                r = forward_shared(lm, images[b : b + batch_size], plan, position=position, answers=answers)
                for k, t in r.items():
                    res[k].append(t)
                bar.update(len(r["hidden"]) * len(names))
            by = {k: torch.cat(t) for k, t in res.items()}
        else:
            pairs = [(i, v) for i in range(stop - start) for v in names]
            for b in range(0, len(pairs), batch_size):
                chunk = pairs[b : b + batch_size]
                r = forward_batch(lm, [prompts[v] for _, v in chunk], [images[i] for i, _ in chunk],
                                  position=position, answers=[answers[v] for _, v in chunk])
                for k, t in r.items():
                    res[k].append(t)
                bar.update(len(chunk))
            by = {k: torch.cat(t).reshape(stop - start, len(names), *t[0].shape[1:]) for k, t in res.items()}
        tok = by["first_token"]
        store.write_shard(
            s,
            hidden={v: by["hidden"][:, j] for j, v in enumerate(names)},
            first_token={v: tok[:, j] for j, v in enumerate(names)},
            margin={v: by["margin"][:, j] for j, v in enumerate(names)},
            first_token_text={v: [lm.tokenizer.decode([int(t)]) for t in tok[:, j]] for j, v in enumerate(names)},
        )
    bar.close()
    return store
