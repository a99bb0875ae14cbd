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
        spec = yaml.safe_load(resources.files("probekit").joinpath("resources/paper_a_variants.yaml").read_text())
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


def messages_for(text: str, *, prefix: str | None = None) -> list[dict]:
    """Chat messages for one image + one question: the image first, as in LLaVA's training data."""
    content = []
    if prefix:
        content.append({"type": "text", "text": prefix})
    content += [{"type": "image"}, {"type": "text", "text": text}]
    return [{"role": "user", "content": content}]
