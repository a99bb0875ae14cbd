import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from probekit.errors import StoreError
from probekit.prompts import paper_a_variants
from probekit.store import ActivationStore

VARIANTS = paper_a_variants()
N, L, D = 10, 4, 6


def make(root, key=None, storage_dtype="float32", shard_size=4):
    return ActivationStore.create(root, key=key or {"model": "m", "x": 1}, variants=VARIANTS, n_items=N,
                                  ids=[f"i{i}" for i in range(N)], labels=[i % 3 for i in range(N)],
                                  classes=["a", "b", "c"], n_layers=L, hidden_size=D,
                                  storage_dtype=storage_dtype, shard_size=shard_size)


def fill(store, data, only=None):
    for s, (a, b) in enumerate(store.shard_ranges()):
        if only is not None and s not in only:
            continue
        names = store.variant_names
        store.write_shard(s, hidden={v: data[a:b, j] for j, v in enumerate(names)},
                          first_token={v: torch.arange(a, b) for v in names},
                          logprob={v: torch.stack([torch.linspace(-1, 1, b - a), torch.zeros(b - a)], 1)
                                   for v in names},
                          first_token_text={v: ["yes"] * (b - a) for v in names})


def rand():
    return torch.randn(N, len(VARIANTS), L, D, generator=torch.Generator().manual_seed(0))


def test_round_trip_is_exact(tmp_path):
    data = rand()
    store = make(tmp_path / "s")
    assert store.missing_shards() == [0, 1, 2]
    fill(store, data)
    again = ActivationStore.open(tmp_path / "s")
    assert again.is_complete()
    for j, v in enumerate(again.variant_names):
        np.testing.assert_array_equal(again.features(v), data[:, j].numpy())
        np.testing.assert_array_equal(again.features(v, 2), data[:, j, 2].numpy())
    np.testing.assert_array_equal(again.labels, [i % 3 for i in range(N)])
    ans = again.answers()
    assert len(ans) == N * len(VARIANTS) and set(ans.columns) >= {"variant", "family", "margin", "correct"}
    # margin = logprob(expected) - logprob(other); the preferred answer and "correct" follow its sign
    for v in VARIANTS:
        a = ans[ans.variant == v.name].reset_index(drop=True)
        lp0 = np.concatenate([np.linspace(-1, 1, b - s, dtype=np.float32) for s, b in again.shard_ranges()])
        want = lp0 if v.expected == v.answers[0] else -lp0
        np.testing.assert_allclose(a.margin, want, atol=1e-6)
        assert (a.correct == (a.margin > 0)).all()
        assert (a.preferred == np.where(a.margin > 0, v.expected, [x for x in v.answers if x != v.expected][0])).all()


def test_a_shard_with_a_wrong_logprob_shape_is_refused(tmp_path):
    store = make(tmp_path / "s")
    names = store.variant_names
    with pytest.raises(StoreError, match="logprob has shape"):
        store.write_shard(0, hidden={v: torch.zeros(4, L, D) for v in names},
                          first_token={v: torch.zeros(4, dtype=torch.long) for v in names},
                          logprob={v: torch.zeros(4) for v in names}, first_token_text={v: ["x"] * 4 for v in names})
    assert store.missing_shards() == [0, 1, 2]


def test_half_precision_storage_round_trips_at_that_precision(tmp_path):
    data = rand()
    store = make(tmp_path / "s", storage_dtype="float16")
    fill(store, data)
    got = store.features("anchor")
    np.testing.assert_array_equal(got, data[:, 0].half().float().numpy())
    with safe_open(store.shard_path(0), framework="pt") as f:
        assert f.get_slice("hidden/anchor").get_dtype() == "F16"
        assert f.get_slice("margin/anchor").get_dtype() == "F32"


def test_resume_after_crash_computes_only_missing_and_matches(tmp_path):
    data = rand()
    store = make(tmp_path / "s")
    fill(store, data, only={0, 2})
    # a crash while writing shard 1 leaves a temporary file of a dead process
    (tmp_path / "s" / ".shard-00001.safetensors.tmp-999999").write_bytes(b"partial")
    resumed = make(tmp_path / "s")
    assert resumed.missing_shards() == [1]
    assert not list((tmp_path / "s").glob(".*tmp-999999"))
    with pytest.raises(StoreError, match="incomplete"):
        resumed.features("anchor")
    fill(resumed, data, only={1})
    full = make(tmp_path / "full")
    fill(full, data)
    for v in full.variant_names:
        np.testing.assert_array_equal(resumed.features(v), full.features(v))


def test_damaged_shard_counts_as_missing(tmp_path):
    store = make(tmp_path / "s")
    fill(store, rand())
    store.shard_path(1).write_bytes(store.shard_path(1).read_bytes()[:100])
    assert store.missing_shards() == [1]


def test_other_key_is_never_mixed(tmp_path):
    make(tmp_path / "s", key={"model": "m", "x": 1})
    with pytest.raises(StoreError) as e:
        make(tmp_path / "s", key={"model": "other", "x": 1})
    assert "model: store has 'm', requested 'other'" in str(e.value)
    store = make(tmp_path / "s")
    fill(store, rand(), only={0})
    # a shard written for another key (copied in by hand) is not taken as done
    other = make(tmp_path / "o", key={"model": "z"})
    fill(other, rand(), only={1})
    store.shard_path(1).write_bytes(other.shard_path(1).read_bytes())
    assert store.missing_shards() == [1, 2]


def test_manifest_is_deterministic_and_reader_checks(tmp_path):
    a, b = make(tmp_path / "a"), make(tmp_path / "b")
    assert (a.root / "manifest.json").read_bytes() == (b.root / "manifest.json").read_bytes()
    assert json.loads((a.root / "manifest.json").read_text())["format"] == "probekit-store/2"
    fill(a, rand())
    with pytest.raises(StoreError, match="layers 0..3"):
        a.features("anchor", 7)
    with pytest.raises(StoreError, match="unknown variant 'nope'"):
        a.features("nope")
    with pytest.raises(StoreError, match="not an activation store"):
        ActivationStore.open(tmp_path / "missing")


def test_named_arrays_round_trip_and_checks(tmp_path):
    shapes = {"keys": (3, 5, 4), "vision": (5, 2)}
    data = {k: torch.randn(N, *v, generator=torch.Generator().manual_seed(1)) for k, v in shapes.items()}

    def create(root, quantities=shapes):
        return ActivationStore.create(root, key={"kind": "arrays"}, variants=[], n_items=N, ids=[str(i) for i in range(N)],
                                      labels=[0] * N, classes=["x"], n_layers=L, hidden_size=D, shard_size=4,
                                      quantities=quantities)

    store = create(tmp_path / "a")
    for s, (a, b) in enumerate(store.shard_ranges()):
        store.write_arrays(s, {k: v[a:b] for k, v in data.items()})
    again = ActivationStore.open(tmp_path / "a")
    assert again.quantities == shapes
    np.testing.assert_array_equal(again.array("keys"), data["keys"].numpy())
    np.testing.assert_array_equal(again.array("keys", 2), data["keys"][:, 2].numpy())
    np.testing.assert_array_equal(again.array("vision"), data["vision"].numpy())
    with pytest.raises(StoreError, match="unknown quantity 'values'"):
        again.array("values")
    with pytest.raises(StoreError, match="out of range 0..2"):
        again.array("keys", 3)
    with pytest.raises(StoreError, match="expected"):  # a wrong shape is refused, not written
        store.write_arrays(0, {"keys": data["keys"][:4, :2], "vision": data["vision"][:4]})
    with pytest.raises(StoreError, match="quantities"):  # same key, other shapes: not mixed
        create(tmp_path / "a", {"keys": (3, 5, 8), "vision": (5, 2)})
    with pytest.raises(StoreError, match="not named arrays"):
        make(tmp_path / "v").write_arrays(0, {})
    # stores of per-variant states keep their manifest exactly as before (no quantities field)
    assert "quantities" not in json.loads((make(tmp_path / "v").root / "manifest.json").read_text())
