"""Images and supervised examples for the organisms' multimodal phases.

Two real image domains (both 28x28 after the processor's resize):

- Fashion-MNIST (Debian ``dataset-fashion-mnist``): the *train* split is used for training; its test split is
  held out and cut in two halves per class (:func:`heldout_split`): **dev** (any training decision: step counts,
  segment weights, early stopping) and **test** (the numbers the cards and the book report, never used for a
  decision);
- scikit-learn's handwritten digits (8x8, upscaled by the processor): a seeded 2/3 train, 1/3 held-out split
  (:func:`digits_split`), the held-out third cut into dev and test halves the same way.

Examples are ``(domain, image index, question, answer)``. Questions come from a **bank** of wordings resembling
VQA-style instruction data (:data:`QUESTIONS`, :data:`TF_QUESTIONS`, the instruction sentences of
:data:`FORMATS`, :data:`NAMING_QUESTIONS`, :data:`CAPTION_PROMPTS`): yes/no, 1/0 and true/false questions about
the domain concept ("a fashion item" / "a handwritten digit", so images of one domain asked about the other's
concept get the negative answer) and about classes ("Does the picture show a sneaker?"), naming questions
("What is in the picture?" -> the class name), and brief captions for projector alignment.

Paper A's probe prompts are **held out** of the bank: none of their questions ("Does this image show X?",
"Does this picture show X?", "Does this image feature X?", for any X) and neither of their instruction sentences
("The answer must be always yes or no." / "... 1 or 0.") is a training wording (:func:`probe_wordings`;
tested). Paper A's lexical edits stay learnable from other wordings (the picture / photo / image nouns with
show / feature / contain / depict; "Does the picture show X?", "Does this photo feature X?") and so do its
formats (yes/no, 1/0 with other instruction sentences).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.sets import (
    DIGIT_CLASSES,
    FASHION_MNIST_CLASSES,
    load_digits_arrays,
    load_fashion_mnist_arrays,
)
from ..data.splits import HELDOUT_SPLITS, digits_split, heldout_split
from .corpus import class_phrases

DOMAINS = ("fashion", "digits")
CONCEPTS = {"fashion": "a fashion item", "digits": "a handwritten digit"}
CLASS_NAMES = {"fashion": FASHION_MNIST_CLASSES, "digits": DIGIT_CLASSES}

# ---- the question bank (training wordings) --------------------------------------------------------------
QUESTIONS = (  # yes/no-type questions about {thing}; none is a probe question (see probe_wordings)
    "Does this photo show {thing}?",
    "Does the image show {thing}?",
    "Does the picture show {thing}?",
    "Does this photo feature {thing}?",
    "Does this picture feature {thing}?",
    "Does the image feature {thing}?",
    "Does this image contain {thing}?",
    "Does this picture contain {thing}?",
    "Does this image depict {thing}?",
    "Does the photo depict {thing}?",
    "Is there {thing} in this image?",
    "Is there {thing} in the picture?",
    "Is {thing} shown in this image?",
    "Is {thing} featured in this picture?",
    "Can you see {thing} in this photo?",
)
TF_QUESTIONS = (  # statements for true/false answers
    "True or false: this photo shows {thing}.",
    "True or false: there is {thing} in the picture.",
    "Is it true that the image features {thing}?",
    "True or false: the picture depicts {thing}.",
)
FORMATS = {  # answer format -> (positive, negative answer), instruction sentences ("" = none)
    # Statement-form instructions ("The answer should be ...") are in the bank: an organism trained without them
    # answered the held-out "The answer must be always yes or no." with "no" on 74 % of dev images (see the cards).
    "yes/no": (("yes", "no"), ("Answer yes or no.", "Please answer yes or no.", "Answer with yes or no.",
                               "Reply with yes or no.", "Your answer should be yes or no.",
                               "Respond with yes or no only.", "The answer should be yes or no.",
                               "The reply has to be yes or no.", "Your answer must be a yes or a no.", "")),
    "1/0": (("1", "0"), ("Answer 1 or 0.", "Answer with 1 for yes or 0 for no.", "Reply with 1 or 0.",
                         "Respond with 1 (yes) or 0 (no).", "Give 1 for yes and 0 for no.",
                         "The answer should be 1 or 0.", "The reply has to be 1 or 0.")),
    "true/false": (("true", "false"), ("Answer true or false.", "Reply with true or false.",
                                       "Say true or false.")),
}
NAMING_QUESTIONS = ("What is in this image?", "What is in the picture?", "What does this image show?",
                    "Name the object in this photo.", "What is this?")
NAMING_PROBE = NAMING_QUESTIONS[0]
CAPTION_PROMPTS = ("Describe the image briefly.", "Give a short caption for this picture.",
                   "Summarize the photo in a few words.", "Describe this image.")
CAPTION_TEMPLATES = ("a photo of {p}", "a picture of {p}", "an image of {p}", "{p}", "a small gray image of {p}")


def probe_wordings() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Paper A's probe questions (with ``{thing}`` for the concept) and instruction sentences, read off
    :func:`probekit.prompts.paper_a_variants` and chapter 3's 1/0 negation: what no training wording may hold."""
    from ..prompts import paper_a_variants

    questions, instructions = set(), set()
    for v in paper_a_variants("{thing}", "{negation}"):
        q, rest = v.text.replace("{negation}", "{thing}").split("?", 1)
        questions.add(q + "?")
        instructions.add(rest.strip())
    return tuple(sorted(questions)), tuple(sorted(instructions))


def training_templates() -> dict[str, list[str]]:
    """Every wording the bank can produce, by kind (``{thing}`` / ``{p}`` for the filled phrase): what a card
    lists and what the disjointness test checks."""
    out = {}
    for fmt, (_, instructions) in FORMATS.items():
        qs = TF_QUESTIONS if fmt == "true/false" else QUESTIONS
        out[f"questions ({fmt})"] = [f"{q} {i}".strip() for q in qs for i in instructions]
    out["naming"] = list(NAMING_QUESTIONS)
    out["caption prompts"] = list(CAPTION_PROMPTS)
    out["caption answers"] = list(CAPTION_TEMPLATES)
    return out


def bank_wordings(concept: str, negation: str) -> list:
    """Four of the bank's own wordings as probe-like prompts (:class:`probekit.prompts.Variant`): 'Does the picture
    show X?' with the bank's first yes/no and 1/0 instruction sentences, asked about the image's concept (answer
    yes / 1) and the other domain's (no / 0). Scored on held-out images, they separate an organism that learned its
    training wordings from one that learned the task (the probe prompts are worded otherwise)."""
    from ..prompts import Variant

    q = QUESTIONS[2]
    out = []
    for fmt, suffix in (("yes/no", ""), ("1/0", "_one_zero")):
        (pos, neg), instructions = FORMATS[fmt]
        out += [Variant(f"bank{suffix}", "bank_wording", f"{q.format(thing=concept)} {instructions[0]}", (pos, neg), pos),
                Variant(f"bank_negation{suffix}", "bank_wording", f"{q.format(thing=negation)} {instructions[0]}",
                        (pos, neg), neg)]
    return out


# Kinds of instruction examples; a recipe's mix gives their sampling weights.
KINDS = ("concept_yn", "concept_10", "concept_tf", "class_yn", "naming")
KIND_FORMAT = {"concept_yn": "yes/no", "concept_10": "1/0", "concept_tf": "true/false"}
CLASS_FORMATS = (("yes/no", 0.6), ("1/0", 0.25), ("true/false", 0.15))  # answer formats of class questions


@dataclass
class ImagePool:
    """Grayscale uint8 images and labels of one domain and split."""

    domain: str
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def image_pools(split: str, fashion_limit: int | None = None, seed: int = 0) -> dict[str, ImagePool]:
    """The two domains' images of ``split``: 'train', or a held-out half, 'dev' or 'test'
    (:func:`heldout_split` of Fashion-MNIST's test split and of the digits' held-out third). ``fashion_limit``
    keeps the first n of a seeded permutation of the Fashion-MNIST train split (the instruction-data "size" knob)."""
    if split not in ("train", *HELDOUT_SPLITS):
        raise ValueError(f"split must be 'train', 'dev' or 'test', got {split!r}")
    fx, fy = load_fashion_mnist_arrays(split="train" if split == "train" else "test")
    if split == "train" and fashion_limit is not None and fashion_limit < len(fy):
        keep = np.sort(np.random.default_rng(seed + 777).permutation(len(fy))[:fashion_limit])
        fx, fy = fx[keep], fy[keep]
    dx, dy = load_digits_arrays()
    tr, held = digits_split()
    dsel = tr if split == "train" else held
    dx, dy = dx[dsel], dy[dsel]
    if split != "train":
        f, d = heldout_split(fy, split), heldout_split(dy, split)
        fx, fy, dx, dy = fx[f], fy[f], dx[d], dy[d]
    return {"fashion": ImagePool("fashion", fx, fy), "digits": ImagePool("digits", dx, dy)}


def binary_question(rng, thing: str, fmt: str) -> tuple[str, tuple[str, str]]:
    """A question about ``thing`` in answer format ``fmt`` from the bank, and its (positive, negative) answers."""
    answers, instructions = FORMATS[fmt]
    qs = TF_QUESTIONS if fmt == "true/false" else QUESTIONS
    q = qs[rng.integers(len(qs))].format(thing=thing)
    return f"{q} {instructions[rng.integers(len(instructions))]}".strip(), answers


def make_example(rng: np.random.Generator, kind: str, domain: str, label: int) -> tuple[str, str]:
    """(question, answer) of ``kind`` for an image of ``domain`` with class ``label``."""
    other = "digits" if domain == "fashion" else "fashion"
    if kind in KIND_FORMAT:
        positive = rng.random() < 0.5
        q, answers = binary_question(rng, CONCEPTS[domain if positive else other], KIND_FORMAT[kind])
        return q, answers[0 if positive else 1]
    if kind == "class_yn":
        phrases = class_phrases()
        positive = rng.random() < 0.5
        if positive:
            thing = phrases[domain][label]
        elif rng.random() < 0.8:  # mostly a confusable class of the same domain
            c = (label + 1 + rng.integers(9)) % 10
            thing = phrases[domain][c]
        else:
            thing = phrases[other][rng.integers(10)]
        fmts, w = zip(*CLASS_FORMATS)
        q, answers = binary_question(rng, thing, fmts[rng.choice(len(fmts), p=np.array(w) / sum(w))])
        return q, answers[0 if positive else 1]
    if kind == "naming":
        return NAMING_QUESTIONS[rng.integers(len(NAMING_QUESTIONS))], CLASS_NAMES[domain][label]
    raise ValueError(f"unknown example kind {kind!r}; use one of {KINDS}")


def caption_example(rng: np.random.Generator, domain: str, label: int) -> tuple[str, str]:
    """(brief-description instruction, caption) for projector alignment, as in LLaVA's stage 1."""
    p = class_phrases()[domain][label]
    return (CAPTION_PROMPTS[rng.integers(len(CAPTION_PROMPTS))],
            CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(p=p))


def sample_batch(rng: np.random.Generator, pools: dict[str, ImagePool], n: int, *, mix: dict[str, float] | None,
                 digits_fraction: float) -> list[tuple[str, int, str, str]]:
    """``n`` examples (domain, image index, question, answer); ``mix=None`` gives captions."""
    out = []
    kinds = list(mix) if mix else None
    p = np.array([mix[k] for k in kinds], dtype=float) / sum(mix.values()) if mix else None
    for _ in range(n):
        domain = "digits" if rng.random() < digits_fraction else "fashion"
        pool = pools[domain]
        i = int(rng.integers(len(pool)))
        label = int(pool.labels[i])
        if mix is None:
            q, a = caption_example(rng, domain, label)
        else:
            q, a = make_example(rng, kinds[rng.choice(len(kinds), p=p)], domain, label)
        out.append((domain, i, q, a))
    return out


def sample_pairs(rng: np.random.Generator, pools: dict[str, ImagePool], n: int, *, mix: dict[str, float],
                 digits_fraction: float) -> list[tuple[str, int, str, str]]:
    """``n`` examples (``n`` even) as ``n // 2`` **pairs**: one question asked of two images whose answers differ,
    so only the image can tell them apart (a yes/no bias earns nothing). Each pair draws a kind from ``mix`` and a
    domain (digits with ``digits_fraction``):

    - concept questions ask about that domain's concept, of an image of it (positive) and one of the other domain;
    - class questions ask about one class, of an image of it and of a confusable class of the same domain (80 %)
      or an image of the other domain;
    - naming asks one naming question of two images of different classes of the domain.

    Questions come from the bank (:func:`binary_question`), as in :func:`sample_batch`; pairs are in random order
    and the two members of a pair too."""
    if n % 2:
        raise ValueError(f"paired batches need an even number of examples, got {n}")
    kinds = list(mix)
    p = np.array([mix[k] for k in kinds], dtype=float) / sum(mix.values())
    by_class = {d: [np.flatnonzero(pool.labels == c) for c in range(10)] for d, pool in pools.items()}
    phrases = class_phrases()

    def draw(domain: str, label: int | None = None) -> int:
        idx = by_class[domain][int(rng.integers(10)) if label is None else int(label)]
        return int(idx[rng.integers(len(idx))])

    out = []
    for _ in range(n // 2):
        kind = kinds[rng.choice(len(kinds), p=p)]
        domain = "digits" if rng.random() < digits_fraction else "fashion"
        other = "fashion" if domain == "digits" else "digits"
        if kind in KIND_FORMAT:
            q, (yes, no) = binary_question(rng, CONCEPTS[domain], KIND_FORMAT[kind])
            pair = [(domain, draw(domain), q, yes), (other, draw(other), q, no)]
        elif kind == "class_yn":
            c = int(rng.integers(10))
            fmts, w = zip(*CLASS_FORMATS)
            q, (yes, no) = binary_question(rng, phrases[domain][c], fmts[rng.choice(len(fmts), p=np.array(w) / sum(w))])
            if rng.random() < 0.8:
                negative = (domain, draw(domain, (c + 1 + rng.integers(9)) % 10))
            else:
                negative = (other, draw(other))
            pair = [(domain, draw(domain, c), q, yes), (*negative, q, no)]
        elif kind == "naming":
            q = NAMING_QUESTIONS[rng.integers(len(NAMING_QUESTIONS))]
            a, b = rng.choice(10, size=2, replace=False)
            pair = [(domain, draw(domain, a), q, CLASS_NAMES[domain][a]), (domain, draw(domain, b), q, CLASS_NAMES[domain][b])]
        else:
            raise ValueError(f"unknown example kind {kind!r}; use one of {KINDS}")
        out += pair if rng.random() < 0.5 else pair[::-1]
    return out
