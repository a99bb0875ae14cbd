"""Shared-prefix reuse equals the naive one-forward-per-prompt path, per supported class."""

import gc
import importlib
import weakref

import numpy as np
import pytest
import torch
from conftest import FAMILIES

from probekit.prompts import paper_a_variants
from probekit.store import ActivationStore

ex = importlib.import_module("probekit.extract.hidden")  # the module (the attribute probekit.extract is the function)

ATOL = 1e-4  # fp32


def _images(fashion, family):
    images = [fashion[i][0] for i in range(4)]
    if family != "llava":  # other sizes give other image-token counts: prefixes of unequal length in one batch
        images[1] = images[1].resize((28, 56))
        images[3] = images[3].resize((56, 28))
    return images


@pytest.mark.parametrize("position", ["last", "image_mean"])
@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_equals_one_forward_per_prompt(family, position, tiny_models, fashion):
    lm = tiny_models[family]
    vs = paper_a_variants(fashion.concept, fashion.negation)
    prompts = {v.name: ex.template(lm, v.text) for v in vs}
    answers = ex.answer_plan(lm, prompts, vs)
    images = _images(fashion, family)
    plan = ex.shared_prefix(lm, prompts, images[0])
    assert plan is not None and all(len(s) >= 1 for s in plan.suffixes.values())
    assert len({s[0] for s in plan.suffixes.values()}) > 1  # the prefix is the longest common one
    got = ex.forward_shared(lm, images, plan, position=position, answers=answers)
    assert got["hidden"].shape == (len(images), len(vs), lm.num_layers + 1, lm.hidden_size)
    names = list(prompts)
    pairs = [(i, v) for i in range(len(images)) for v in names]
    ref = ex.forward_batch(lm, [prompts[v] for _, v in pairs], [images[i] for i, _ in pairs], position=position,
                           answers=[answers[v] for _, v in pairs])
    for k in ("hidden", "logprob"):
        want = ref[k].reshape(got[k].shape)
        torch.testing.assert_close(got[k], want, atol=ATOL, rtol=0)
    torch.testing.assert_close(got["first_token"], ref["first_token"].reshape(len(images), len(vs)))


def test_prefix_reuse_is_the_default_and_matches_the_reference_store(tiny_models, fashion, tmp_path, monkeypatch):
    lm = tiny_models["qwen2_vl"]
    vs = paper_a_variants(fashion.concept, fashion.negation)
    small = fashion.subset(1)
    calls = []
    real = ex.forward_shared
    monkeypatch.setattr(ex, "forward_shared", lambda lm_, im, *a, **k: calls.append(len(im)) or real(lm_, im, *a, **k))
    fast = ex.extract(lm, small, vs, tmp_path / "fast", shard_size=4, batch_size=3, progress=False)
    assert calls == [3, 1, 3, 1, 2] and fast.manifest["extra"]["reuse_prefix"] is True
    naive = ex.extract(lm, small, vs, tmp_path / "naive", shard_size=4, batch_size=3, progress=False,
                       reuse_prefix=False)
    assert fast.key == naive.key  # same numbers up to rounding: one cache key
    for v in fast.variant_names:
        np.testing.assert_allclose(fast.features(v), naive.features(v), atol=ATOL, rtol=0)
    a, b = fast.answers(), naive.answers()
    assert (a.first_token == b.first_token).all()
    np.testing.assert_allclose(a.margin, b.margin, atol=ATOL)


def test_variants_that_differ_before_the_image_fall_back_to_one_forward_per_prompt(tiny_models, fashion, tmp_path,
                                                                                   monkeypatch):
    lm = tiny_models["llava"]
    img = lm.processor.image_token
    prompts = {"a": f"USER: Look. {img}\nIs it? ASSISTANT:", "b": f"USER: See here. {img}\nIs it? ASSISTANT:"}
    assert ex.shared_prefix(lm, prompts, fashion[0][0]) is None
    vs = [v for v in paper_a_variants() if v.name in ("anchor", "picture")]
    monkeypatch.setattr(ex, "template", lambda lm_, text, prefix=None: prompts["a" if "image" in text else "b"])
    with pytest.warns(UserWarning, match="no shared prefix"):
        store = ex.extract(lm, fashion.subset(1), vs, tmp_path / "s", progress=False)
    assert store.is_complete()


def test_extraction_holds_one_shard_at_a_time(tiny_models, fashion, tmp_path, monkeypatch):
    """Peak memory does not grow with the dataset: when shard s is written, nothing of earlier shards is alive."""
    lm = tiny_models["llava"]
    vs = paper_a_variants(families=["lexical"])
    data = fashion.subset(2)  # 20 images, 5 shards of 4
    alive, loaded = [], []
    real_loader = data.loader

    def loader(item_id):
        im = real_loader(item_id)
        alive.append(weakref.ref(im))
        loaded.append(item_id)
        return im

    data.loader = loader
    real_write = ActivationStore.write_shard
    seen = []

    def write(self, index, hidden, **k):
        gc.collect()
        start, stop = self.shard_ranges()[index]
        assert len(loaded) == stop + 1  # images are loaded shard by shard (+ once the calibration image)
        assert sum(r() is not None for r in alive) <= stop - start  # earlier shards' images are freed
        assert all(r() is None for r in seen)  # and so are earlier shards' states
        seen.extend(weakref.ref(t if t._base is None else t._base) for t in hidden.values())
        return real_write(self, index, hidden, **k)

    monkeypatch.setattr(ActivationStore, "write_shard", write)
    store = ex.extract(lm, data, vs, tmp_path / "s", shard_size=4, batch_size=4, progress=False)
    assert store.is_complete() and len(store.shard_ranges()) == 5
