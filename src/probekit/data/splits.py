"""Splits: the digits' fixed train / held-out cut, the held-out images' dev / test halves, and the two-domain
datasets of chapters 1 and 3 (images of the concept and of the negation).

The organisms train on Fashion-MNIST's train split and the digits' train two thirds; everything held out is cut per
class into **dev** (training decisions) and **test** (what is reported), see :func:`heldout_split`.
"""

from __future__ import annotations

import numpy as np

from .sets import (
    DIGIT_CLASSES,
    ImageDataset,
    array_images,
    get_dataset,
    load_digits_arrays,
)


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


HELDOUT_SPLITS = ("dev", "test")


def heldout_split(labels: np.ndarray, split: str, seed: int = 0) -> np.ndarray:
    """Positions of ``split`` ('dev' or 'test') among held-out images with these ``labels``: per class a seeded
    permutation, its first half dev, the rest test (so the two never share an image)."""
    if split not in HELDOUT_SPLITS:
        raise ValueError(f"held-out split must be one of {HELDOUT_SPLITS}, got {split!r}")
    rng = np.random.default_rng(seed + 4242)
    keep = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        half = len(idx) // 2
        keep += (idx[:half] if split == "dev" else idx[half:]).tolist()
    return np.sort(np.asarray(keep, dtype=np.int64))


def two_domain_dataset(dataset: str = "fashion-mnist", data_root: str | None = None, n_per_class: int | None = 50,
                       seed: int = 0, contrast: str = "digits") -> ImageDataset:
    """Images of the concept (``dataset``) and of the negation (``contrast``), so the correct answer to
    "Does this image show <concept>?" is yes for some images and no for others.

    The contrast digits are the organisms' held-out third (:func:`digits_split`).
    """
    main = get_dataset(dataset, data_root, n_per_class=n_per_class, seed=seed)
    if contrast == "digits":
        x, y = load_digits_arrays()
        _, held = digits_split()
        other = ImageDataset("digits/held-out", list(DIGIT_CLASSES), [(str(i), int(y[i])) for i in held],
                             array_images(x), "a handwritten digit", "a fashion item", "sklearn digits held-out third")
        other = other.subset(n_per_class, seed)
    else:
        other = get_dataset(contrast, None, n_per_class=n_per_class, seed=seed)
    k = len(main.classes)
    items = [("a:" + i, y) for i, y in main.items] + [("b:" + i, y + k) for i, y in other.items]
    loaders = {"a": main.loader, "b": other.loader}
    ds = ImageDataset(
        name=f"{main.name}+{other.name}", classes=list(main.classes) + list(other.classes), items=items,
        loader=lambda i: loaders[i[0]](i[2:]), concept=main.concept, negation=main.negation,
        source=f"{main.source} + {other.source}",
    )
    ds.domain_split = k  # labels < k show the concept
    return ds
