"""Image datasets: an image folder, a local ImageNet restricted to the dog breeds, and two real image
sets that registry packages ship (Fashion-MNIST from Debian's ``dataset-fashion-mnist``; scikit-learn's
bundled handwritten digits).

Every dataset is a list of ``(item id, class index)`` with class names, a ``concept`` the images show and
a ``negation`` concept they do not show (used to fill paper A's prompts), and an ``identity()`` that
enters the activation store's cache key. Images are returned as RGB ``PIL.Image``.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
DIGIT_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


MAX_IMAGE_PIXELS = int(os.environ.get("PROBEKIT_MAX_IMAGE_PIXELS", 64_000_000))


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB for any PIL mode: 16/32-bit and float images are rescaled to 8 bits (not clipped); transparency
    (alpha channels, palette transparency) is composited onto white; CMYK/YCbCr/L/P convert as usual."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.min() >= 0 and a.max() <= 65535):
            a = a / 257.0
        else:  # 32-bit integer or float data of unknown range: stretch to 0..255
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo or 1.0) * 255.0
        im = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), mode="L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


@contextlib.contextmanager
def _own_size_limit():
    """PIL's decompression-bomb check replaced by probekit's (clearer) one while a file is opened."""
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def load_image(path: str | Path, *, max_pixels: int | None = None) -> Image.Image:
    """Open an image file as RGB (see :func:`to_rgb`); any file that can't be used raises one DataError
    naming it and the fix: missing, truncated, not an image, or larger than ``max_pixels``
    (default ``PROBEKIT_MAX_IMAGE_PIXELS`` = 64 Mpx; decoding such a file would take gigabytes)."""
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image file {str(path)!r} does not exist; restore it or remove it from the dataset")
    try:
        with _own_size_limit(), Image.open(path) as im:
            w, h = im.size
            if w * h > limit:
                raise DataError(
                    f"image file {str(path)!r} is {w}x{h} ({w * h / 1e6:.0f} Mpx), above the limit of "
                    f"{limit / 1e6:.0f} Mpx; downscale it (models resize to a few hundred pixels anyway) or "
                    "raise PROBEKIT_MAX_IMAGE_PIXELS"
                )
            im.load()
            return to_rgb(im)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(
            f"cannot read image file {str(path)!r} ({type(e).__name__}: {e}); it is truncated or not an image: "
            "replace or remove it"
        ) from None


@dataclass
class ImageDataset:
    """A labelled image set. ``items[i] = (id, class index)``; ``loader(id) -> PIL RGB image``."""

    name: str
    classes: list[str]
    items: list[tuple[str, int]]
    loader: object = field(repr=False)
    concept: str = "an animal"
    negation: str = "a plane"
    source: str = ""

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        item_id, label = self.items[i]
        return self.loader(item_id), label

    @property
    def labels(self) -> np.ndarray:
        return np.array([y for _, y in self.items], dtype=np.int64)

    @property
    def ids(self) -> list[str]:
        return [i for i, _ in self.items]

    def identity(self) -> dict:
        """What identifies this data for caching: name, source, and a hash of (ids, labels, classes)."""
        from ..store import key_sha256

        h = key_sha256([self.classes, self.items])
        return {"name": self.name, "source": self.source, "n": len(self), "items_sha256": h}

    def subset(self, n_per_class: int | None, seed: int = 0) -> "ImageDataset":
        """At most ``n_per_class`` items per class, chosen reproducibly with ``seed`` (order kept)."""
        if n_per_class is None:
            return self
        if not isinstance(n_per_class, (int, np.integer)) or isinstance(n_per_class, bool) or n_per_class < 1:
            raise DataError(f"n_per_class must be a positive integer, got {n_per_class!r}")
        rng = np.random.default_rng(seed)
        labels = self.labels
        keep = []
        for c in range(len(self.classes)):
            idx = np.flatnonzero(labels == c)
            if len(idx) > n_per_class:
                idx = np.sort(rng.choice(idx, n_per_class, replace=False))
            keep.extend(idx.tolist())
        keep.sort()
        return ImageDataset(
            name=f"{self.name}[n_per_class={n_per_class},seed={seed}]",
            classes=self.classes,
            items=[self.items[i] for i in keep],
            loader=self.loader,
            concept=self.concept,
            negation=self.negation,
            source=self.source,
        )


def image_folder(root: str | Path, *, concept: str = "an animal", negation: str = "a plane",
                 classes: Sequence[str] | None = None, name: str = "image-folder") -> ImageDataset:
    """One subfolder per class (sorted names, or the given ``classes``), image files inside."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist; pass --data-root with one subfolder per class")
    dirs = [root / c for c in classes] if classes else sorted(p for p in root.iterdir() if p.is_dir())
    items: list[tuple[str, int]] = []
    names = []
    for d in dirs:
        if not d.is_dir():
            continue
        files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            continue
        items += [(str(p.relative_to(root)), len(names)) for p in files]
        names.append(d.name)
    if not items:
        raise DataError(f"no images found under {str(root)!r}; expected one subfolder per class with image files")
    return ImageDataset(name, names, items, lambda i: load_image(root / i), concept, negation, str(root.resolve()))


def dog_wnids() -> list[tuple[str, str]]:
    """The 120 Stanford Dogs / ImageNet dog-breed synsets as (WordNet id, breed name).

    Source: Khosla et al. 2011 (Stanford Dogs); the file header gives the provenance.
    """
    text = resources.files("probekit").joinpath("resources/stanford_dogs_120.txt").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith("#")]
    return [(w, n.replace("_", " ")) for w, n in rows]


def imagenet_dogs(root: str | Path, *, split: str = "val") -> ImageDataset:
    """A local ImageNet tree ``root/{train,val}/<wnid>/*.JPEG`` restricted to the 120 dog breeds.

    ``split='val'`` needs the validation images sorted into class folders (the usual layout).
    """
    base = Path(root) / split
    if not base.is_dir():
        raise DataError(
            f"ImageNet split folder {str(base)!r} not found; pass the ImageNet root that holds "
            f"'{split}/<wnid>/' folders (e.g. --data-root /data/imagenet)"
        )
    wnids = dog_wnids()
    present = [(w, n) for w, n in wnids if (base / w).is_dir()]
    if not present:
        raise DataError(f"none of the 120 dog-breed WordNet ids (e.g. {wnids[0][0]}) is a folder in {str(base)!r}")
    ds = image_folder(base, classes=[w for w, _ in present], name=f"imagenet-dogs/{split}")
    names = dict(present)
    ds.classes = [names[w] for w in ds.classes]
    return ds


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise DataError(f"{str(path)!r} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for cand in (root / f"{stem}.gz", root / stem):
        if cand.is_file():
            return cand
    raise DataError(
        f"Fashion-MNIST file {stem}(.gz) not found in {str(root)!r}. Install Debian's package "
        "(apt-get install dataset-fashion-mnist, files land in /usr/share/datasets/fashion-mnist) or put the "
        "four IDX files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
        "t10k-labels-idx1-ubyte.gz (from the Fashion-MNIST project's release) in one folder and pass it as --data-root"
    )


def array_images(pixels: np.ndarray) -> "callable":
    """A loader for in-memory grayscale uint8 images: id ``"<index>"`` -> RGB PIL image."""
    return lambda i: Image.fromarray(pixels[int(i)]).convert("RGB")


def load_fashion_mnist_arrays(root: str | Path | None = None, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels int64 [n]) of Fashion-MNIST's train (60k) or test (10k) split."""
    if split not in ("train", "test"):
        raise DataError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root else FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    x = _read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
    y = _read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    return x, y


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


FASHION_SPLITS = ("test", "dev", "train", "all-test")


def fashion_mnist(root: str | Path | None = None, *, split: str = "test") -> ImageDataset:
    """Fashion-MNIST (Xiao et al. 2017), 28x28 grayscale, 10 classes, as RGB images.

    ``split``: ``test`` (default) — the **test half** of Fashion-MNIST's official test split (:func:`heldout_split`),
    which no training decision of the organisms ever saw; ``dev`` — the other half (the organisms' decisions);
    ``train``; ``all-test`` — the official 10,000 test images. Item ids are the images' indices in their file.
    """
    if split not in FASHION_SPLITS:
        raise DataError(f"Fashion-MNIST split must be one of {', '.join(FASHION_SPLITS)}, got {split!r}")
    x, y = load_fashion_mnist_arrays(root, "train" if split == "train" else "test")
    keep = heldout_split(y, split) if split in HELDOUT_SPLITS else np.arange(len(y))
    items = [(str(int(i)), int(y[i])) for i in keep]
    src = str(Path(root) if root else FASHION_MNIST_DIR)
    return ImageDataset(f"fashion-mnist/{split}", list(FASHION_MNIST_CLASSES), items, array_images(x),
                        "a fashion item", "a handwritten digit", src)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (1,797 images, 8x8, 0..16) as uint8 0..255 and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.clip(d.images * 16, 0, 255).astype(np.uint8)
    return x, d.target.astype(np.int64)


DIGIT_SPLITS = ("all", "test", "dev", "train")


def digits(split: str = "all") -> ImageDataset:
    """scikit-learn's handwritten digits (UCI optdigits test set), 8x8 grayscale, 10 classes.

    ``split``: ``all`` (default, 1,797 images); ``train`` — the organisms' 2/3 (:func:`digits_split`); ``test`` /
    ``dev`` — the halves of the held-out third (:func:`heldout_split`). Item ids are indices into the whole set."""
    if split not in DIGIT_SPLITS:
        raise DataError(f"digits split must be one of {', '.join(DIGIT_SPLITS)}, got {split!r}")
    x, y = load_digits_arrays()
    keep = np.arange(len(y))
    if split != "all":
        tr, held = digits_split()
        keep = tr if split == "train" else held[heldout_split(y[held], split)]
    items = [(str(int(i)), int(y[i])) for i in keep]
    name = "digits" if split == "all" else f"digits/{split}"
    return ImageDataset(name, list(DIGIT_CLASSES), items, array_images(x),
                        "a handwritten digit", "a fashion item", "sklearn.datasets.load_digits")


DATASETS = ("fashion-mnist", "digits", "imagenet-dogs", "image-folder")


def get_dataset(name: str, root: str | Path | None = None, *, n_per_class: int | None = None, seed: int = 0,
                split: str | None = None, concept: str | None = None, negation: str | None = None) -> ImageDataset:
    """A dataset by name (see ``DATASETS``), optionally subsampled to ``n_per_class`` per class."""
    if name == "fashion-mnist":
        ds = fashion_mnist(root, split=split or "test")
    elif name == "digits":
        ds = digits(split or "all")
    elif name == "imagenet-dogs":
        if root is None:
            raise DataError("imagenet-dogs needs the ImageNet root folder: pass --data-root / data_root")
        ds = imagenet_dogs(root, split=split or "val")
    elif name == "image-folder":
        if root is None:
            raise DataError("image-folder needs a folder with one subfolder per class: pass --data-root / data_root")
        ds = image_folder(root)
    else:
        raise DataError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    if concept:
        ds.concept = concept
    if negation:
        ds.negation = negation
    return ds.subset(n_per_class, seed)
