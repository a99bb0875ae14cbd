"""Images and supervised examples for the organisms' multimodal phases.

Two real image domains (both 28x28 after the processor's resize):

- Fashion-MNIST (Debian ``dataset-fashion-mnist``): the *train* split is used for training; the test
  split is held out and is what the model cards report on;
- scikit-learn's handwritten digits (8x8, upscaled by the processor): a seeded 2/3 train, 1/3 held-out
  split (:func:`digits_split`).

Examples are ``(domain, image index, question, answer)``. Questions come from a bank of phrasings
resembling VQA-style instruction data: yes/no and 1/0 questions about the domain concept ("a fashion
item" / "a handwritten digit", so images of one domain asked about the other's concept get "no"), yes/no
questions about a class ("Does this picture show a sneaker?"), naming questions ("What is in this
image?" -> the class name), and brief captions for projector alignment. Paper A's anchor and its
variants are phrasings in this bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import DIGIT_CLASSES, FASHION_MNIST_CLASSES, load_digits_arrays, load_fashion_mnist_arrays
from .corpus import class_phrases

DOMAINS = ("fashion", "digits")
CONCEPTS = {"fashion": "a fashion item", "digits": "a handwritten digit"}
CLASS_NAMES = {"fashion": FASHION_MNIST_CLASSES, "digits": DIGIT_CLASSES}

NOUNS = ("image", "picture", "photo")
VERBS = ("show", "feature", "contain", "depict")
YN_SUFFIXES = ("The answer must be always yes or no.", "Answer yes or no.", "Please answer yes or no.",
               "Answer with yes or no.", "")
BIN_SUFFIXES = ("The answer must be always 1 or 0.", "Answer 1 or 0.", "Answer with 1 for yes or 0 for no.",
                "Reply with 1 or 0.")
NAMING_QUESTIONS = ("What is in this image?", "What is in the picture?", "What does this image show?",
                    "Name the object in this photo.", "What is this?")
NAMING_PROBE = NAMING_QUESTIONS[0]
CAPTION_PROMPTS = ("Describe the image briefly.", "Give a short caption for this picture.",
                   "Summarize the photo in a few words.", "Describe this image.")
CAPTION_TEMPLATES = ("a photo of {p}", "a picture of {p}", "an image of {p}", "{p}", "a small gray image of {p}")

# Kinds of instruction examples; a recipe's mix gives their sampling weights.
KINDS = ("concept_yn", "concept_10", "class_yn", "naming")


@dataclass
class ImagePool:
    """Grayscale uint8 images and labels of one domain and split."""

    domain: str
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, held-out) of scikit-learn's digits: a fixed 2/3 : 1/3 split, stratified."""
    _, y = load_digits_arrays()
    rng = np.random.default_rng(seed + 12345)
    train, test = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = len(idx) // 3
        test += idx[:k].tolist()
        train += idx[k:].tolist()
    return np.sort(train), np.sort(test)


def image_pools(split: str, fashion_limit: int | None = None, seed: int = 0) -> dict[str, ImagePool]:
    """The two domains' images of ``split`` ('train' or 'test'); ``fashion_limit`` keeps the first n
    of a seeded permutation of the Fashion-MNIST split (the instruction-data "size" knob)."""
    fx, fy = load_fashion_mnist_arrays(split=split)
    if fashion_limit is not None and fashion_limit < len(fy):
        keep = np.sort(np.random.default_rng(seed + 777).permutation(len(fy))[:fashion_limit])
        fx, fy = fx[keep], fy[keep]
    dx, dy = load_digits_arrays()
    tr, te = digits_split()
    sel = tr if split == "train" else te
    return {"fashion": ImagePool("fashion", fx, fy), "digits": ImagePool("digits", dx[sel], dy[sel])}


def _yn_question(rng, thing: str, binary: bool) -> str:
    form = rng.integers(3)
    noun = NOUNS[rng.integers(len(NOUNS))]
    if form == 0 or form == 1:
        verb = VERBS[rng.integers(len(VERBS))]
        q = f"Does this {noun} {verb} {thing}?"
    else:
        q = f"Is there {thing} in this {noun}?"
    suffixes = BIN_SUFFIXES if binary else YN_SUFFIXES
    suffix = suffixes[rng.integers(len(suffixes))]
    return f"{q} {suffix}".strip()


def make_example(rng: np.random.Generator, kind: str, domain: str, label: int) -> tuple[str, str]:
    """(question, answer) of ``kind`` for an image of ``domain`` with class ``label``."""
    other = "digits" if domain == "fashion" else "fashion"
    if kind in ("concept_yn", "concept_10"):
        positive = rng.random() < 0.5
        thing = CONCEPTS[domain if positive else other]
        binary = kind == "concept_10"
        answer = ("1" if positive else "0") if binary else ("yes" if positive else "no")
        return _yn_question(rng, thing, binary), answer
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
        binary = rng.random() < 0.3
        answer = ("1" if positive else "0") if binary else ("yes" if positive else "no")
        return _yn_question(rng, thing, binary), answer
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
