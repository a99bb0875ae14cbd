import numpy as np
import pytest
from PIL import Image

from probekit.data.sets import dog_wnids, get_dataset, image_folder, imagenet_dogs
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
    ds = get_dataset("fashion-mnist", split="all-test")
    assert len(ds) == 10000 and len(ds.classes) == 10
    img, y = ds[0]
    assert img.size == (28, 28) and img.mode == "RGB" and y == 9  # the first test image is an ankle boot
    dev, test = get_dataset("fashion-mnist", split="dev"), get_dataset("fashion-mnist", split="test")
    assert len(dev) == len(test) == 5000 and not set(dev.ids) & set(test.ids)  # the halves of Fashion-MNIST's test
    assert set(dev.ids) | set(test.ids) == set(ds.ids)
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


# ---- bad image files (issue 7, case 5) -------------------------------------------------------------
import struct  # noqa: E402
import zlib  # noqa: E402

from probekit.data import load_image  # noqa: E402


def png_claiming_size(path, w, h):
    """A valid small PNG whose header claims w x h (decoding would need w*h bytes)."""
    Image.new("L", (4, 4)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length+type of IHDR
    data[ihdr : ihdr + 8] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


def test_bad_image_files_each_get_one_clear_error(tmp_path):
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(good)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    huge = tmp_path / "huge.png"
    png_claiming_size(huge, 20000, 20000)
    cases = {tmp_path / "missing.png": "does not exist", truncated: "truncated", text: "not an image",
             huge: "20000x20000"}
    for path, words in cases.items():
        with pytest.raises(DataError) as e:
            load_image(path)
        assert str(path) in str(e.value) and words in str(e.value)


def test_unusual_modes_become_faithful_rgb(tmp_path):
    a16 = np.full((4, 4), 40000, dtype=np.uint16)  # 16-bit grey, ~61 % of full scale
    Image.fromarray(a16).save(tmp_path / "g16.png")
    im = load_image(tmp_path / "g16.png")
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (156, 156, 156)  # scaled, not clipped to 255
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    r, g, b = load_image(tmp_path / "cmyk.jpg").getpixel((0, 0))
    assert r > 200 and g < 60 and b < 60  # cyan=0, magenta=yellow=full: red
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert load_image(tmp_path / "clear.png").getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    p = Image.new("P", (4, 4), 0)
    p.putpalette([0, 0, 0] * 256)
    p.save(tmp_path / "pal.png", transparency=0)
    assert load_image(tmp_path / "pal.png").getpixel((0, 0)) == (255, 255, 255)


def test_empty_dataset_is_refused_before_anything_is_written(tmp_path, tiny_models):
    from probekit.errors import ProbekitError
    from probekit.extract import extract
    from probekit.prompts import paper_a_variants

    (tmp_path / "imgs" / "cat").mkdir(parents=True)  # a class folder with no images
    with pytest.raises(DataError, match="no images found"):
        image_folder(tmp_path / "imgs")
    empty = get_dataset("digits").subset(1)
    empty.items = []
    with pytest.raises(ProbekitError, match="is empty"):
        extract(tiny_models["llava"], empty, paper_a_variants(), tmp_path / "store", progress=False)
    assert not (tmp_path / "store").exists()
