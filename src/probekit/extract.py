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
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .data import ImageDataset
from .errors import ProbekitError, PromptError
from .models import LoadedModel
from .prompts import Variant, check_position, messages_for
from .store import ActivationStore


def template(lm: LoadedModel, text: str, *, prefix: str | None = None) -> str:
    """The prompt exactly as the model sees it (before image-token expansion)."""
    try:
        out = lm.processor.apply_chat_template(messages_for(text, prefix=prefix), add_generation_prompt=True,
                                              tokenize=False)
    except Exception as e:  # jinja errors surface here
        raise PromptError(f"the chat template of {lm.model_id!r} failed on {text!r}: {e}") from None
    placeholder = lm.adapter.image_placeholder(lm.processor)
    if out.count(placeholder) != 1:
        raise PromptError(
            f"the chat template of {lm.model_id!r} wrote the image placeholder {placeholder!r} {out.count(placeholder)} "
            "times instead of once; fix the processor's chat template"
        )
    return out


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


def forward_batch(lm: LoadedModel, prompts: Sequence[str], images: Sequence, *, position: str = "last",
                  answers: Sequence[tuple[list[int], list[int]]] | None = None) -> dict[str, torch.Tensor]:
    """One batched forward pass. Returns ``hidden`` [B, L+1, d] at the probed position, and when
    ``answers`` is given (one (expected ids, other ids) pair per row) ``first_token`` [B] and ``margin`` [B]."""
    check_position(position)
    inputs = lm.processor(text=list(prompts), images=list(images), padding=True, padding_side="right",
                          return_tensors="pt")
    inputs = {k: v.to(lm.device) for k, v in inputs.items()}
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(lm.dtype)
    mask = inputs["attention_mask"]
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(1)  # last real token, whatever the padding side
    with _no_grad_eval(lm.model):
        out = lm.model(**inputs, output_hidden_states=True, use_cache=False, logits_to_keep=last[:, None])
    rows = torch.arange(mask.shape[0], device=mask.device)
    if position == "last":
        hidden = torch.stack([h[rows, last] for h in out.hidden_states], dim=1)  # [B, L+1, d]
    else:
        img = (inputs["input_ids"] == lm.image_token_id).unsqueeze(-1)  # [B, T, 1]
        n_img = img.sum(1).clamp(min=1)
        hidden = torch.stack([(h * img).sum(1) / n_img for h in out.hidden_states], dim=1)
    result = {"hidden": hidden.float().cpu()}
    logits = out.logits[:, -1].float()  # [B, V] at the answer position
    result["first_token"] = logits.argmax(-1).cpu()
    if answers is not None:
        pos = torch.stack([logits[b, ids].max() for b, (ids, _) in enumerate(answers)])
        neg = torch.stack([logits[b, ids].max() for b, (_, ids) in enumerate(answers)])
        result["margin"] = (pos - neg).cpu()
    return result


def extract(lm: LoadedModel, dataset: ImageDataset, variants: Sequence[Variant], out, *, position: str = "last",
            batch_size: int = 8, storage_dtype: str = "float32", shard_size: int = 64, progress: bool = True,
            prefix: str | None = None) -> ActivationStore:
    """Extract every layer's state at ``position`` for every image x variant into the store at ``out``.

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
        extra={"device": str(lm.device), "model_path": lm.path, "prefix": prefix},
    )
    todo = store.missing_shards()
    ranges = store.shard_ranges()
    names = [v.name for v in variants]
    bar = tqdm(total=sum(ranges[i][1] - ranges[i][0] for i in todo) * len(variants), disable=not progress,
               desc=f"extract {lm.model_id}", unit="prompt")
    for s in todo:
        start, stop = ranges[s]
        images = [dataset[i][0] for i in range(start, stop)]
        pairs = [(i, v) for i in range(stop - start) for v in names]
        res = {k: [] for k in ("hidden", "first_token", "margin")}
        for b in range(0, len(pairs), batch_size):
            chunk = pairs[b : b + batch_size]
            r = forward_batch(lm, [prompts[v] for _, v in chunk], [images[i] for i, _ in chunk], position=position,
                              answers=[answers[v] for _, v in chunk])
            for k in res:
                res[k].append(r[k])
            bar.update(len(chunk))
        cat = {k: torch.cat(v) for k, v in res.items()}
        n, V = stop - start, len(names)
        by = {k: t.reshape(n, V, *t.shape[1:]) for k, t in cat.items()}
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
