"""Splits: the digits' fixed train / held-out cut, the held-out images' dev / test halves, and the two-domain
datasets of chapters 1 and 3 (images of the concept and of the negation).

The organisms train on Fashion-MNIST's train split and the digits' train two thirds; everything held out is cut per
class into **dev** (training decisions) and **test** (what is reported), see :func:`heldout_split`.
"""

from __future__ import annotations

from .sets import HELDOUT_SPLITS, ImageDataset, digits_split, get_dataset, heldout_split

__all__ = ["HELDOUT_SPLITS", "digits_split", "heldout_split", "two_domain_dataset"]


def two_domain_dataset(dataset: str = "fashion-mnist", data_root: str | None = None, n_per_class: int | None = 50,
                       seed: int = 0, contrast: str = "digits", split: str = "test") -> ImageDataset:
    """Images of the concept (``dataset``) and of the negation (``contrast``), so the correct answer to
    "Does this image show <concept>?" is yes for some images and no for others.

    Both come from ``split`` ("test": the held-out halves no training decision saw — Fashion-MNIST's test half and
    the digits' test half of their held-out third, which has about 30 images per class, so ``n_per_class`` caps
    there). Labels: the concept's classes first, then the contrast's (``ds.domain_split`` = the first contrast label).
    """
    main = get_dataset(dataset, data_root, n_per_class=n_per_class, seed=seed, split=split)
    other = get_dataset(contrast, None, n_per_class=n_per_class, seed=seed, split=split)
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
