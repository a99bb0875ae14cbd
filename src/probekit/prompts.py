"""Prompt variants as data: paper A's anchor question and its variant families.

A :class:`Variant` is one prompt: its family (``anchor``, ``lexical``, ``semantic_negation``,
``output_format`` or any user-defined family), its text, the pair of answers the model chooses between,
and the expected answer for images that show the dataset's concept.

Variant sets are written as YAML or dicts (see ``resources/paper_a_variants.yaml``)::

    anchor: {name: anchor, text: "Does this image show {concept}? ...", answers: [yes, no], expected: yes}
    families:
      lexical:
        - {name: picture, replace: {image: picture}}
      my_family:
        - {name: colour, text: "Is this image in colour? Answer yes or no.", expected: yes}

A variant either gives its full ``text`` or ``replace`` edits applied to the anchor; every ``old`` of a
replacement must occur in the anchor (otherwise the variant would not change what it claims to).
Unset ``answers``/``expected`` are inherited from the anchor. ``{concept}`` and ``{negation}`` are filled
from the dataset.

The probed position. Paper A probes "the last token" (secondary sources, see
``shared/reference/papers.md``). probekit reads the last token of the *templated* prompt — the chat
template applied to (image, question) with the generation prompt added — i.e. the position whose
next-token distribution is the model's answer. ``position="image_mean"`` averages the image-token
positions instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import yaml

from .errors import PromptError

ANCHOR_FAMILY = "anchor"
POSITIONS = ("last", "image_mean")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One prompt. ``expected`` is one of ``answers`` (positive first)."""

    name: str
    family: str
    text: str
    answers: tuple[str, str]
    expected: str

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["answers"] = list(self.answers)
        return d


def check_position(position: str) -> str:
    if position not in POSITIONS:
        raise PromptError(f"unknown position rule {position!r}; use one of {', '.join(POSITIONS)}")
    return position


def _fill(text: str, fields: Mapping[str, str], where: str) -> str:
    try:
        return text.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise PromptError(
            f"{where}: cannot fill placeholder {e} in {text!r}; known placeholders are "
            f"{', '.join('{' + k + '}' for k in fields)} (write literal braces as '{{' and '}}')"
        ) from None


def _variant(spec: Mapping, family: str, anchor: Variant | None, raw_anchor: str | None, fields) -> Variant:
    if not isinstance(spec, Mapping):
        raise PromptError(f"variant family {family!r}: each variant must be a mapping, got {spec!r}")
    name = spec.get("name")
    if not name:
        raise PromptError(f"variant family {family!r}: a variant has no 'name'; give each variant a unique name")
    where = f"variant {name!r} (family {family!r})"
    if ("text" in spec) == ("replace" in spec):
        raise PromptError(f"{where}: give exactly one of 'text' (the full prompt) or 'replace' (edits of the anchor)")
    if "text" in spec:
        raw = str(spec["text"])
    else:
        if raw_anchor is None:
            raise PromptError(f"{where}: 'replace' needs an anchor to edit; define 'anchor' with a 'text'")
        raw = raw_anchor
        edits = spec["replace"]
        if not isinstance(edits, Mapping) or not edits:
            raise PromptError(f"{where}: 'replace' must map old text to new text, e.g. {{image: picture}}")
        for old, new in edits.items():
            old, new = str(old), str(new)
            if old not in raw:
                raise PromptError(
                    f"{where}: the anchor {raw_anchor!r} does not contain {old!r}, so this variant would not "
                    "change what it should; fix the 'replace' key to a phrase of the anchor"
                )
            raw = raw.replace(old, new)
    answers = spec.get("answers", anchor.answers if anchor else None)
    if answers is None or len(answers) != 2 or len({str(a) for a in answers}) != 2:
        raise PromptError(f"{where}: 'answers' must be two different strings (positive, negative), e.g. [yes, no]")
    answers = (str(answers[0]), str(answers[1]))
    expected = spec.get("expected")
    if expected is None:
        if anchor is None or "answers" in spec:
            raise PromptError(f"{where}: no 'expected' answer; add expected: one of {list(answers)}")
        expected = anchor.expected
    expected = str(expected)
    if expected not in answers:
        raise PromptError(f"{where}: expected answer {expected!r} is not one of its answers {list(answers)}")
    text = _fill(raw, fields, where)
    if anchor is not None and text == anchor.text:
        raise PromptError(f"{where}: its text equals the anchor's; a variant must change the prompt")
    return Variant(name=str(name), family=family, text=text, answers=answers, expected=expected)


def load_variants(
    spec: Mapping | str | Path | None = None,
    *,
    concept: str = "an animal",
    negation: str = "a plane",
    families: Sequence[str] | None = None,
) -> list[Variant]:
    """Build the variant list from a dict, a YAML file path, or ``None``/``"paper-a"`` (paper A's set).

    ``families`` keeps only those families (the anchor is always kept, first). Names must be unique.
    """
    if spec is None or spec == "paper-a":
        spec = _paper_a_spec()
    elif isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_file():
            raise PromptError(f"variants file {str(path)!r} not found; pass 'paper-a' or the path of a YAML file")
        try:
            spec = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise PromptError(f"variants file {str(path)!r} is not valid YAML: {e}") from None
    if not isinstance(spec, Mapping) or "anchor" not in spec:
        raise PromptError("a variant set needs an 'anchor' entry (the question the probes are trained on)")
    fields = {"concept": concept, "negation": negation}
    anchor_spec = dict(spec["anchor"]) if isinstance(spec["anchor"], Mapping) else {"text": spec["anchor"]}
    anchor_spec.setdefault("name", "anchor")
    if "text" not in anchor_spec:
        raise PromptError("the anchor needs a 'text'")
    anchor = _variant(anchor_spec, ANCHOR_FAMILY, None, None, fields)
    out = [anchor]
    fams = spec.get("families") or {}
    if not isinstance(fams, Mapping):
        raise PromptError("'families' must map a family name to a list of variants")
    if families is not None:
        unknown = [f for f in families if f not in fams and f != ANCHOR_FAMILY]
        if unknown:
            raise PromptError(
                f"unknown variant family {', '.join(map(repr, unknown))}; this set has {', '.join(fams) or 'none'}"
            )
    for fam, items in fams.items():
        if families is not None and fam not in families:
            continue
        if not isinstance(items, Sequence) or isinstance(items, str) or not items:
            raise PromptError(f"variant family {fam!r} must be a non-empty list of variants")
        out.extend(_variant(item, str(fam), anchor, str(anchor_spec["text"]), fields) for item in items)
    names = [v.name for v in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PromptError(f"variant names must be unique; repeated: {', '.join(dupes)}")
    return out


def paper_a_variants(concept: str = "an animal", negation: str = "a plane", families=None) -> list[Variant]:
    """Paper A's anchor and its lexical, semantic-negation and output-format variants."""
    return load_variants("paper-a", concept=concept, negation=negation, families=families)


NEGATION_ONE_ZERO = {"name": "negation_one_zero", "replace": {"{concept}": "{negation}", "yes or no": "1 or 0"},
                     "answers": ["1", "0"], "expected": "0"}


def _paper_a_spec() -> dict:
    return yaml.safe_load(resources.files("probekit").joinpath("resources/paper_a_variants.yaml").read_text())


def decision_variants(concept: str = "an animal", negation: str = "a plane") -> list[Variant]:
    """Paper A's anchor, negation and 1/0 variants plus the negation asked in 1/0 format (``negation_one_zero``),
    so both answer formats have both answers (chapter 3)."""
    spec = _paper_a_spec()
    spec["families"] = {"semantic_negation": spec["families"]["semantic_negation"],
                        "output_format": spec["families"]["output_format"] + [dict(NEGATION_ONE_ZERO)]}
    return load_variants(spec, concept=concept, negation=negation)


def probe_prompts(concept: str = "an animal", negation: str = "a plane") -> list[Variant]:
    """Every prompt the book probes with: paper A's five and chapter 3's ``negation_one_zero``."""
    spec = _paper_a_spec()
    spec["families"]["output_format"] = spec["families"]["output_format"] + [dict(NEGATION_ONE_ZERO)]
    return load_variants(spec, concept=concept, negation=negation)


def book_prompts(concept: str = "an animal", negation: str = "a plane", spec="paper-a") -> list[Variant]:
    """The prompts chapters 1-4 share one extraction for: ``spec``'s variants (paper A's five by default) and, with
    paper A's set, chapter 3's ``negation_one_zero``. (The unseen paraphrases are a behaviour check on fewer images:
    :func:`unseen_paraphrases`.)"""
    if spec is None or spec == "paper-a":
        return probe_prompts(concept, negation)
    return load_variants(spec, concept=concept, negation=negation)


def unseen_paraphrases(concept: str = "an animal", negation: str = "a plane") -> list[Variant]:
    """Paraphrases of paper A's anchor (and of its negation and 1/0 format) that no organism trained on
    (``resources/unseen_paraphrases.yaml``), after the anchor itself."""
    spec = yaml.safe_load(resources.files("probekit").joinpath("resources/unseen_paraphrases.yaml").read_text())
    return load_variants(spec, concept=concept, negation=negation)


def dev_wordings(concept: str = "an animal", negation: str = "a plane") -> list[Variant]:
    """Wordings scored on dev images for the organisms' training decisions only (``resources/dev_wordings.yaml``),
    beside the probe prompts: neither training wordings, nor probe prompts, nor :func:`unseen_paraphrases`."""
    spec = yaml.safe_load(resources.files("probekit").joinpath("resources/dev_wordings.yaml").read_text())
    return [v for v in load_variants(spec, concept=concept, negation=negation) if v.family == "dev_wording"]


def messages_for(text: str, *, prefix: str | None = None) -> list[dict]:
    """Chat messages for one image + one question: the image first, as in LLaVA's training data."""
    content = []
    if prefix:
        content.append({"type": "text", "text": prefix})
    content += [{"type": "image"}, {"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


# ---- templating ---------------------------------------------------------------------------------------

def template(lm, text: str, *, prefix: str | None = None) -> str:
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



# ---- answers as token sequences --------------------------------------------------------------------------

def surface_forms(answer: str) -> list[str]:
    """The ways a model may write ``answer`` right after its generation prompt: as given, capitalised and in
    lower case, each with and without a leading space (``yes``, ``Yes``, `` yes``, `` Yes``)."""
    words = dict.fromkeys([answer, answer.capitalize(), answer.lower()])
    return [space + w for w in words for space in ("", " ")]


def answer_token_sequences(tokenizer, prompt: str, answer: str) -> list[tuple[int, ...]]:
    """Every token sequence ``tokenizer`` writes for a surface form of ``answer`` after ``prompt`` (the templated
    prompt, ending in the model's generation prompt), sorted.

    Each surface form is tokenized twice: as the continuation of ``prompt`` (the tokens of ``prompt + form``
    after those of ``prompt``, when tokenizing the two together leaves the prompt's tokens as they are) and on
    its own. Together these give the forms with and without a word-start marker: Llama-2's SentencePiece writes
    " 1" after ``ASSISTANT:`` as ``▁``, ``1`` and "Yes" as ``▁Yes``; byte-level BPE (Qwen2) writes ``yes`` and
    ``Ġyes``. A sequence is kept only when the prompt's tokens followed by it decode to the prompt followed by a
    surface form: a tokenizer that marks the start of every text it encodes writes " yes" on its own as
    ``▁▁``, ``yes``, which after the prompt would spell two spaces. (Should no sequence of the answer pass that
    check — a tokenizer whose decoding does not give its text back — all are kept.)
    """
    def encode(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False))

    def decode(ids) -> str:
        return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    base = encode(prompt)
    forms = surface_forms(answer)
    seqs: dict[tuple[int, ...], None] = {}
    for form in forms:
        full = encode(prompt + form)
        if len(full) > len(base) and full[: len(base)] == base:
            seqs[tuple(full[len(base):])] = None
        alone = encode(form)
        if alone:
            seqs[tuple(alone)] = None
    written = {decode(base) + f for f in forms}
    kept = [s for s in seqs if decode([*base, *s]) in written]
    return sorted(kept or seqs)


@dataclasses.dataclass(frozen=True)
class AnswerForms:
    """One variant's two answers as the token sequences a model may write for them after its generation prompt.

    ``forms[i]``: the sequences of ``answers[i]`` (none shared with the other answer); ``expected``: the index of
    the expected answer. An answer's score is the log-probability of its best form, teacher-forced after the
    prompt (:meth:`score`); no end-of-answer token is scored.
    """

    variant: str
    answers: tuple[str, str]
    expected: int
    forms: tuple[tuple[tuple[int, ...], ...], tuple[tuple[int, ...], ...]]

    @property
    def rows(self) -> tuple[tuple[int, ...], ...]:
        """The tokens appended after the prompt, one row each, so that one teacher-forced pass scores every form:
        each multi-token form without its last token. A single-token form is read at the prompt's last position,
        which every row has; with only single-token forms there is one row and nothing is appended."""
        extra = sorted({f[:-1] for fs in self.forms for f in fs if len(f) > 1})
        return tuple(extra) or ((),)

    def score(self, logprobs):
        """Best-form log-probability of each answer, ``[n, 2]`` (answers order).

        ``logprobs[r]``: ``[n, 1 + len(rows[r]), vocab]`` log-softmax of the next token at the prompt's last
        position and after each appended token of row ``r``.
        """
        import torch

        row = {r: i for i, r in enumerate(self.rows)}
        best = []
        for fs in self.forms:
            scores = [sum(logprobs[row[f[:-1]] if len(f) > 1 else 0][:, j, t] for j, t in enumerate(f)) for f in fs]
            best.append(torch.stack(scores, 0).max(0).values)
        return torch.stack(best, 1)

    def to_dict(self) -> dict:
        return {"answers": list(self.answers), "expected": self.expected,
                "forms": [[list(f) for f in fs] for fs in self.forms]}


def answer_forms(tokenizer, prompt: str, variant: Variant) -> AnswerForms:
    """The answer sequences of ``variant`` after its templated ``prompt``.

    A sequence both answers can produce (e.g. "Yes"/"yes" under a lower-casing tokenizer) tells them apart for
    neither and is dropped; when one answer has no sequence left, the two answers cannot be told apart at all and
    one PromptError names both.
    """
    seqs = [answer_token_sequences(tokenizer, prompt, a) for a in variant.answers]
    shared = set(seqs[0]) & set(seqs[1])
    kept = tuple(tuple(s for s in ss if s not in shared) for ss in seqs)
    if not kept[0] or not kept[1]:
        raise PromptError(
            f"variant {variant.name!r}: the answers {variant.answers[0]!r} and {variant.answers[1]!r} are the same "
            "token sequences under this tokenizer, so the model's preference between them cannot be read; choose "
            "answers that are written differently"
        )
    return AnswerForms(variant=variant.name, answers=variant.answers, expected=variant.answers.index(variant.expected),
                       forms=kept)
