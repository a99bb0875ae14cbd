import numpy as np
import pytest
from PIL import Image

from probekit.data import dog_wnids, get_dataset, image_folder, imagenet_dogs
from probekit.errors import DataError


def write_folder(root):
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.new("RGBA", (9, 7), (10, 20, 30, 128)).save(root / "cat" / "a.png")
    Image.new("P", (5, 5)).save(root / "cat" / "b.gif")
    Image.new("L", (4, 4), 200).save(root / "dog" / "c.jpg")
    Image.new("CMYK", (4, 4)).save(root / "dog" / "d.jpg")
    (root / "dog" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_reads_classes_and_converts_to_rgb(tmp_path):
    ds = image_folder(write_folder(tmp_path / "imgs"))
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    assert list(ds.labels) == [0, 0, 1, 1]
    for i in range(len(ds)):
        img, _ = ds[i]
        assert img.mode == "RGB"
    assert ds[0][0].size == (9, 7)


def test_unreadable_image_names_the_file(tmp_path):
    root = write_folder(tmp_path / "imgs")
    (root / "dog" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    ds = image_folder(root)
    i = ds.ids.index("dog/broken.jpg")
    with pytest.raises(DataError, match="broken.jpg"):
        ds[i]


def test_identity_changes_with_content_and_subset_is_reproducible(tmp_path):
    ds = get_dataset("digits")
    a, b = ds.subset(5, seed=1), ds.subset(5, seed=1)
    assert a.ids == b.ids and a.identity() == b.identity()
    assert ds.subset(5, seed=2).identity() != a.identity()
    assert np.bincount(a.labels).tolist() == [5] * 10
    with pytest.raises(DataError, match="positive integer"):
        ds.subset(0)


def test_fashion_mnist_from_the_debian_package():
    ds = get_dataset("fashion-mnist", split="test")
    assert len(ds) == 10000 and len(ds.classes) == 10
    img, y = ds[0]
    assert img.size == (28, 28) and img.mode == "RGB" and y == 9  # the first test image is an ankle boot
    assert len(get_dataset("fashion-mnist", split="train")) == 60000


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        get_dataset("fashion-mnist", root=tmp_path)


def test_imagenet_dogs_restricts_to_the_120_breeds(tmp_path):
    wnids = dog_wnids()
    assert len(wnids) == 120 and len({w for w, _ in wnids}) == 120
    val = tmp_path / "val"
    for w in (wnids[0][0], wnids[5][0], "n01440764"):  # two breeds and a tench
        (val / w).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(val / w / "x.JPEG")
    ds = imagenet_dogs(tmp_path)
    assert ds.classes == [wnids[0][1], wnids[5][1]] and len(ds) == 2
    assert ds.concept == "an animal" and ds.negation == "a plane"
    with pytest.raises(DataError, match="unknown dataset 'dogs'"):
        get_dataset("dogs")
