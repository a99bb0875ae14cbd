"""Datasets and splits.

- :mod:`.sets`: an image folder, a local ImageNet restricted to the dog breeds, Fashion-MNIST (Debian's
  ``dataset-fashion-mnist``) and scikit-learn's digits, each an :class:`ImageDataset` (item ids, labels, class
  names, the concept the images show and a negation concept they do not show, and an identity for caching);
- :mod:`.splits`: the digits' train / held-out cut, the held-out dev / test halves, the two-domain datasets.
"""

from .sets import (
                   DATASETS,
                   DIGIT_CLASSES,
                   FASHION_MNIST_CLASSES,
                   ImageDataset,
                   array_images,
                   get_dataset,
                   load_image,
                   to_rgb,
)
from .splits import HELDOUT_SPLITS, digits_split, heldout_split, two_domain_dataset

__all__ = ["DATASETS", "DIGIT_CLASSES", "FASHION_MNIST_CLASSES", "HELDOUT_SPLITS", "ImageDataset", "array_images",
           "digits_split", "get_dataset", "heldout_split", "load_image", "to_rgb", "two_domain_dataset"]
