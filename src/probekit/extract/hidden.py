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
per row. Beside the states, the model's behaviour is recorded: for each of the variant's two answers the
log-probability of its whole token sequence as the model would write it after its own generation prompt
(teacher-forced; every surface form the tokenizer produces for it, the best one counts:
:func:`probekit.prompts.answer_forms`), hence the preferred answer and the log-prob margin (expected minus
other), and the greedy first token for reference. Answers that share a first token (" 1" / " 0" under
Llama-2's SentencePiece are ``▁``,``1`` / ``▁``,``0``) are told apart by their later tokens. Multi-token forms
are appended to the prompt as extra rows of the same pass, so no extra pass over the image is needed.

Shared-prefix reuse (``reuse_prefix=True``, the default). All variants of one image share the image tokens and
the templated text around them up to where the questions first differ; under causal attention those positions
do not depend on what follows. :func:`shared_prefix` finds that longest common token prefix (which must hold
every image token), :func:`forward_shared` runs image + prefix once per image (batched over images of equal
prefix length), keeps the key/value cache and runs each variant's suffix, with its answer rows, on it (the
cache is put back to the prefix after every pass; ``batch_variants=True`` runs all variants in one pass). Family-specific positions for the suffix (Qwen2-VL's 3-D rotary ids) come from
the adapter. :func:`forward_batch` (one forward per prompt) stays the reference; both agree within float
rounding (tested per class to 1e-4 in fp32).
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..compat import cache_kwargs, output_cache
from ..data import ImageDataset
from ..errors import ProbekitError, PromptError
from ..models import LoadedModel
from ..prompts import AnswerForms, Variant, answer_forms, check_position, template
from ..store import ActivationStore
from .runtime import collate, no_grad_eval, to_device


def answer_plan(lm: LoadedModel, prompts: dict[str, str], variants: Sequence[Variant]) -> dict[str, AnswerForms]:
    """Per variant: its answers as token sequences after its templated prompt (:func:`probekit.prompts.answer_forms`)."""
    return {v.name: answer_forms(lm.tokenizer, prompts[v.name], v) for v in variants}


READOUT = "answer-sequences/1"  # in the cache key: how the answer columns of a store were computed


def _layers(hidden_states, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``[len(rows), L+1, d]``: every layer's state at the (row, column) pairs, float32 on the CPU (layers may
    sit on several devices under ``device_map="auto"``)."""
    return torch.stack([h[rows.to(h.device), cols.to(h.device)].float().cpu() for h in hidden_states], 1)


def _image_mean(lm: LoadedModel, input_ids: torch.Tensor, hidden_states) -> torch.Tensor:
    img = (input_ids == lm.image_token_id).unsqueeze(-1)  # [B, T, 1]
    n_img = img.sum(1).clamp(min=1)
    return torch.stack([((h * img.to(h.device)).sum(1) / n_img.to(h.device)).float().cpu() for h in hidden_states], 1)


def _readout(lm: LoadedModel, final: torch.Tensor, cols: torch.Tensor, plans: Sequence[AnswerForms | None],
             rows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """The answer readout of K probed items from the final (normed) hidden states ``final`` [N, T, d].

    Item k's answer row r (its prompt followed by ``plans[k].rows[r]``) is batch row ``rows[k][r]``, whose prompt
    ends at column ``cols[rows[k][r]]``; the next-token log-probabilities there and after each appended token come
    from the model's own output head. Returns ``first_token`` [K] (the greedy next token after the prompt) and,
    when every item has a plan, ``logprob`` [K, 2] (:meth:`AnswerForms.score`).
    """
    flat = [r for rs in rows for r in rs]
    width = 1 + max((len(e) for p in plans if p is not None for e in p.rows), default=0)
    b = torch.tensor(flat, device=final.device)
    pos = (cols.to(final.device)[b, None] + torch.arange(width, device=final.device)).clamp(max=final.shape[1] - 1)
    head = lm.model.get_output_embeddings()
    lp = torch.log_softmax(head(final[b[:, None], pos]).float(), -1)  # [len(flat), width, vocab]
    first, logprob, at = [], [], 0
    for plan, rs in zip(plans, rows):
        first.append(lp[at, 0].argmax())
        if plan is not None:
            logprob.append(plan.score([lp[at + i : at + i + 1, : 1 + len(e)] for i, e in enumerate(plan.rows)])[0])
        at += len(rs)
    out = {"first_token": torch.stack(first).cpu()}
    if len(logprob) == len(plans):
        out["logprob"] = torch.stack(logprob).cpu()
    return out


_SEQUENCE_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")


def _append(inputs: dict, extras: Sequence[tuple[int, ...]], pad_id: int) -> tuple[dict, torch.Tensor]:
    """Right-padded processor ``inputs`` with ``extras[b]`` appended after row b's last real token (re-padded on
    the right; appended tokens are text). Returns the new inputs and each row's last prompt position."""
    n = inputs["attention_mask"].sum(1)
    if not any(extras):
        return inputs, n - 1
    width = max(int(k) + len(e) for k, e in zip(n, extras))
    out = dict(inputs)
    for key in _SEQUENCE_KEYS:
        if key in inputs:
            t = inputs[key]
            new = torch.full((t.shape[0], width), pad_id if key == "input_ids" else 0, dtype=t.dtype)
            for b, (k, e) in enumerate(zip(n.tolist(), extras)):
                new[b, :k] = t[b, :k]
                if key == "input_ids":
                    new[b, k : k + len(e)] = torch.tensor(e, dtype=t.dtype)
                elif key == "attention_mask":
                    new[b, k : k + len(e)] = 1
            out[key] = new
    return out, n - 1


def _pad_id(lm: LoadedModel) -> int:
    pad = lm.tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def forward_batch(lm: LoadedModel, prompts: Sequence[str], images: Sequence, *, position: str = "last",
                  answers: Sequence[AnswerForms] | None = None) -> dict[str, torch.Tensor]:
    """One batched forward pass per prompt (the reference path). Returns ``hidden`` [B, L+1, d] at the probed
    position, ``first_token`` [B] (the greedy next token after the prompt) and, with ``answers`` (one
    :class:`AnswerForms` per prompt), ``logprob`` [B, 2]: each answer's best form, teacher-forced after the
    prompt. A prompt runs once per answer row (its multi-token forms appended; once when all are single tokens)."""
    check_position(position)
    plans = list(answers) if answers is not None else [None] * len(prompts)
    rows = [(b, extra) for b, p in enumerate(plans) for extra in (p.rows if p is not None else ((),))]
    inputs = lm.processor(text=[prompts[b] for b, _ in rows], images=[images[b] for b, _ in rows], padding=True,
                          padding_side="right", return_tensors="pt")
    inputs, last = _append(inputs, [e for _, e in rows], _pad_id(lm))
    inputs = to_device(lm, inputs)
    with no_grad_eval(lm.model):
        out = lm.model(**inputs, output_hidden_states=True, use_cache=False, logits_to_keep=1)
    index = [[i for i, (b, _) in enumerate(rows) if b == k] for k in range(len(prompts))]
    first = torch.tensor([ix[0] for ix in index])
    if position == "last":
        hidden = _layers(out.hidden_states, first, last[first])
    else:
        hidden = _image_mean(lm, inputs["input_ids"][first.to(lm.device)], [h[first.to(h.device)] for h in out.hidden_states])
    return {"hidden": hidden, **_readout(lm, out.hidden_states[-1], last, plans, index)}


@dataclass(frozen=True)
class SharedPrefix:
    """The templated prompts of all variants as one shared token prefix (holding every image token) plus a
    non-empty token suffix per variant. The prefix length varies with the image's token count; the suffixes don't."""

    prompts: dict[str, str]
    suffixes: dict[str, tuple[int, ...]]


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


def _rewind(cache, length: int) -> None:
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def _on_cache(lm: LoadedModel, cache, prefix_inputs: dict, length: int, seqs: Sequence[tuple[int, ...]]):
    """Run token sequences ``seqs`` after the cached prefix of every image of the group (``length`` tokens;
    ``prefix_inputs`` its processor inputs). Batch row ``j * len(seqs) + k`` is image j followed by ``seqs[k]``,
    right-padded: the prefix cache is repeated per sequence for the pass, then put back as it was."""
    g, R = prefix_inputs["input_ids"].shape[0], len(seqs)
    T = max(map(len, seqs))
    ids = torch.full((g * R, T), _pad_id(lm), dtype=torch.long)
    pos = []
    for k, s in enumerate(seqs):
        ids[k::R, : len(s)] = torch.tensor(s)
        p = lm.adapter.suffix_position_ids(lm.model, prefix_inputs, torch.tensor(s, device=lm.device).expand(g, -1))
        if p is not None:  # text positions go on one per token behind the real ones (pads are never read)
            pos.append(torch.cat([p, p[..., -1:] + torch.arange(1, T - len(s) + 1, device=p.device)], -1))
    position_ids = torch.stack(pos, -2).flatten(-3, -2) if pos else None  # [..., g, R, T] -> [..., g*R, T]
    if R > 1:
        cache.batch_repeat_interleave(R)
    try:
        out = lm.model(input_ids=ids.to(lm.device), position_ids=position_ids, use_cache=True,
                       output_hidden_states=True, logits_to_keep=1, **cache_kwargs(lm.model, cache))
    finally:
        if R > 1:
            cache.batch_select_indices(torch.arange(0, g * R, R))
        _rewind(cache, length)
    return out


def forward_shared(lm: LoadedModel, images: Sequence, plan: SharedPrefix, *, position: str = "last",
                   answers: dict[str, AnswerForms] | None = None, batch_variants: bool = False) -> dict[str, torch.Tensor]:
    """Every variant of ``plan`` on every image, running image + shared prefix once per image.

    Images are preprocessed once; images whose prefixes have the same length (always, for a fixed image size)
    share one prefix pass. Each variant's suffix then runs on the prefix's key/value cache, with its answers'
    multi-token forms appended (one row each, :attr:`AnswerForms.rows`), so the answers are scored in the same
    pass; the cache is put back to the prefix after every pass. ``batch_variants``: all variants' rows in one pass
    (the prefix cache repeated per row; fewer, larger passes for accelerators) instead of one pass per variant;
    both give the same numbers up to float rounding. Returns ``hidden`` [B, V, L+1, d], ``first_token`` [B, V]
    and, with ``answers`` (variant name -> :class:`AnswerForms`), ``logprob`` [B, V, 2]; variants in ``plan``
    order.
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
    res = {k: [None] * len(images) for k in ("hidden", "first_token", "logprob")}
    with no_grad_eval(lm.model):
        for length, idx in groups.items():
            g = len(idx)
            inputs = to_device(lm, collate([encs[i] for i in idx]))
            pre = lm.model(**inputs, use_cache=True, output_hidden_states=position == "image_mean", logits_to_keep=1)
            cache = output_cache(pre)
            mean = _image_mean(lm, inputs["input_ids"], pre.hidden_states) if position == "image_mean" else None
            per = defaultdict(dict)
            for vs in [names] if batch_variants else [[v] for v in names]:
                specs = [(v, e) for v in vs for e in (answers[v].rows if answers is not None else ((),))]
                out = _on_cache(lm, cache, inputs, length, [plan.suffixes[v] + e for v, e in specs])
                R = len(specs)
                cols = torch.tensor([len(plan.suffixes[v]) - 1 for v, _ in specs] * g)
                for v in vs:
                    ks = [k for k, (w, _) in enumerate(specs) if w == v]
                    rows = [[j * R + k for k in ks] for j in range(g)]
                    first = torch.tensor([r[0] for r in rows])
                    per["hidden"][v] = _layers(out.hidden_states, first, cols[first]) if mean is None else mean
                    r = _readout(lm, out.hidden_states[-1], cols, [answers[v] if answers else None] * g, rows)
                    for key, t in r.items():
                        per[key][v] = t
                del out
            del cache, pre
            for key, by in per.items():
                stacked = torch.stack([by[v] for v in names], 1)  # [g, V, ...]
                for j, i in enumerate(idx):
                    res[key][i] = stacked[j]
    return {k: torch.stack(v) for k, v in res.items() if v[0] is not None}


def seen_by_model(lm: LoadedModel, prompts: dict[str, str], image) -> dict:
    """What the analysis shows of the model's view without loading it again: the image tokens of one image and
    each prompt's probed (last) token as the tokenizer writes it."""
    first = next(iter(prompts.values()))
    ids = lm.processor(text=[first], images=[image], return_tensors="pt")["input_ids"]
    return {"image_tokens": int((ids == lm.image_token_id).sum()),
            "probed_tokens": {v: (lm.tokenizer.tokenize(p) or [""])[-1] for v, p in prompts.items()}}


def extract(lm: LoadedModel, dataset: ImageDataset, variants: Sequence[Variant], out, *, position: str = "last",
            batch_size: int = 8, storage_dtype: str = "float32", shard_size: int = 64, progress: bool = True,
            prefix: str | None = None, reuse_prefix: bool = True, batch_variants: bool = False) -> ActivationStore:
    """Extract every layer's state at ``position`` for every image x variant into the store at ``out``, with the
    model's answer to each prompt (each answer's best-form log-probability, teacher-forced after the prompt; the
    greedy first token).

    ``reuse_prefix`` (default): image + shared prompt prefix run once per image, variants as suffixes on the
    cached keys/values (:func:`forward_shared`; ``batch_size`` images per prefix pass; ``batch_variants``: all
    variants in one pass); falls back, with a warning, to one forward per prompt when the variants differ before
    the image. ``reuse_prefix=False``: one forward per (image, variant) prompt, ``batch_size`` prompts per pass
    (:func:`forward_batch`, the reference). All paths give the same numbers up to float rounding, so they share a
    store.

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
    answers = answer_plan(lm, prompts, variants)
    first = dataset[0][0]  # the calibration image: the model's view for the manifest and the shared-prefix plan
    key = {
        "model": lm.identity(),
        "position": position,
        "prompts": prompts,
        "variants": [v.to_dict() for v in variants],
        "readout": READOUT,
        "answer_sequences": {k: a.to_dict() for k, a in answers.items()},
        "dataset": dataset.identity(),
        "storage_dtype": storage_dtype,
    }
    store = ActivationStore.create(
        out, key=key, variants=variants, n_items=len(dataset), ids=dataset.ids, labels=dataset.labels,
        classes=dataset.classes, n_layers=lm.num_layers + 1, hidden_size=lm.hidden_size,
        storage_dtype=storage_dtype, shard_size=shard_size,
        extra={"device": str(lm.device), "device_map": "auto" if lm.info.get("device_map") else None,
               "model_path": lm.path, "prefix": prefix, "reuse_prefix": reuse_prefix, "batch_variants": batch_variants,
               **seen_by_model(lm, prompts, first)},
    )
    todo = store.missing_shards()
    ranges = store.shard_ranges()
    names = [v.name for v in variants]
    bar = tqdm(total=sum(ranges[i][1] - ranges[i][0] for i in todo) * len(variants), disable=not progress,
               desc=f"extract {lm.model_id}", unit="prompt")
    plan = shared_prefix(lm, prompts, first) if reuse_prefix and todo else None
    del first  # held no longer than needed: memory stays one shard's worth
    if reuse_prefix and todo and plan is None:
        warnings.warn("the prompt variants differ before the image, so there is no shared prefix to reuse; "
                      "running one forward per prompt", stacklevel=2)
    for s in todo:
        start, stop = ranges[s]
        images = [dataset[i][0] for i in range(start, stop)]
        res = defaultdict(list)
        if plan is not None:
            for b in range(0, len(images), batch_size):
                r = forward_shared(lm, images[b : b + batch_size], plan, position=position, answers=answers,
                                   batch_variants=batch_variants)
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
            logprob={v: by["logprob"][:, j] for j, v in enumerate(names)},
            first_token_text={v: [lm.tokenizer.decode([int(t)]) for t in tok[:, j]] for j, v in enumerate(names)},
        )
    bar.close()
    return store
