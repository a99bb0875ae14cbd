import importlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from probekit.cli import main
from probekit.errors import StoreError
from probekit.prompts import paper_a_variants
from probekit.store import ActivationStore

ex = importlib.import_module("probekit.extract.hidden")  # the module (the package probekit.extract exports the function)


class Crash(Exception):
    pass


def test_extract_crash_then_resume_computes_only_missing(tiny_models, fashion, tmp_path, monkeypatch):
    lm = tiny_models["llava"]
    vs = paper_a_variants(fashion.concept, fashion.negation)
    full = ex.extract(lm, fashion, vs, tmp_path / "full", shard_size=8, batch_size=5, progress=False)
    assert full.features("anchor").shape == (len(fashion), lm.num_layers + 1, lm.hidden_size)

    real_write = ActivationStore.write_shard
    written = []

    def crash_after_one(self, index, *a, **k):
        if written:
            raise Crash("killed")
        written.append(index)
        return real_write(self, index, *a, **k)

    monkeypatch.setattr(ActivationStore, "write_shard", crash_after_one)
    with pytest.raises(Crash):
        ex.extract(lm, fashion, vs, tmp_path / "resumed", shard_size=8, batch_size=5, progress=False)
    monkeypatch.setattr(ActivationStore, "write_shard", real_write)
    assert ActivationStore.open(tmp_path / "resumed").missing_shards() == [1, 2, 3]

    computed = []
    monkeypatch.setattr(ActivationStore, "write_shard",
                        lambda self, index, *a, **k: computed.append(index) or real_write(self, index, *a, **k))
    resumed = ex.extract(lm, fashion, vs, tmp_path / "resumed", shard_size=8, batch_size=5, progress=False)
    assert computed == [1, 2, 3]  # only the missing shards
    for v in full.variant_names:
        np.testing.assert_array_equal(resumed.features(v), full.features(v))
    pd.testing.assert_frame_equal(resumed.answers(), full.answers())


def test_store_of_another_position_rule_is_not_mixed(tiny_models, fashion, tmp_path):
    lm = tiny_models["llava"]
    vs = paper_a_variants(families=["lexical"])
    small = fashion.subset(1)
    ex.extract(lm, small, vs, tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="position: store has 'last', requested 'image_mean'"):
        ex.extract(lm, small, vs, tmp_path / "s", position="image_mean", progress=False)


def test_cli_extract_then_probe_end_to_end(tiny_dirs, tmp_path, capsys):
    store, csv = tmp_path / "store", tmp_path / "out" / "results.csv"
    rc = main(["extract", "--model", str(tiny_dirs["qwen2_vl"]), "--dataset", "fashion-mnist", "--n-per-class", "3",
               "--out", str(store), "--device", "cpu", "--dtype", "float32", "--batch-size", "4"])
    assert rc == 0
    assert "30 images x 5 variants x 4 layers" in capsys.readouterr().out
    assert main(["probe", str(store), "--out", str(csv), "--n-boot", "200"]) == 0
    df = pd.read_csv(csv)
    assert {"layer", "variant", "family", "accuracy", "ci_low", "ci_high"} <= set(df.columns)
    assert len(df) == 4 * 5 and set(df.family) == {"anchor", "lexical", "semantic_negation", "output_format"}
    assert ((df.ci_low <= df.accuracy) & (df.accuracy <= df.ci_high)).all()


def test_cli_no_prefix_reuse_takes_the_reference_path_with_equal_numbers(tiny_dirs, tmp_path):
    from probekit.store import ActivationStore

    args = ["extract", "--model", str(tiny_dirs["llava"]), "--dataset", "fashion-mnist", "--n-per-class", "1",
            "--device", "cpu", "--dtype", "float32", "--batch-size", "4"]
    assert main([*args, "--out", str(tmp_path / "fast")]) == 0
    assert main([*args, "--out", str(tmp_path / "ref"), "--no-prefix-reuse"]) == 0
    fast, ref = ActivationStore.open(tmp_path / "fast"), ActivationStore.open(tmp_path / "ref")
    assert fast.manifest["extra"]["reuse_prefix"] is True and ref.manifest["extra"]["reuse_prefix"] is False
    for v in fast.variants:
        np.testing.assert_allclose(fast.features(v.name), ref.features(v.name), atol=1e-4)


def test_cli_errors_are_one_line_and_nonzero(tmp_path):
    r = subprocess.run([sys.executable, "-m", "probekit.cli", "extract", "--model", "./missing/model", "--dataset",
                        "digits", "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr
    assert not (tmp_path / "s").exists()
    r = subprocess.run([sys.executable, "-m", "probekit.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "extract" in r.stdout and "probe" in r.stdout


def test_store_of_another_model_or_dtype_is_not_mixed(tiny_models, tiny_dirs, fashion, tmp_path):
    from probekit.models import load_model

    vs = paper_a_variants(families=["lexical"])
    small = fashion.subset(1)
    ex.extract(tiny_models["llava"], small, vs, tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="model.model_id"):
        ex.extract(tiny_models["llava_next"], small, vs, tmp_path / "s", progress=False)
    with pytest.raises(StoreError, match="storage_dtype"):
        ex.extract(tiny_models["llava"], small, vs, tmp_path / "s", storage_dtype="float16", progress=False)
    bf16 = load_model(str(tiny_dirs["llava"]), dtype="bfloat16", device="cpu")
    with pytest.raises(StoreError, match="model.dtype: store has 'float32', requested 'bfloat16'"):
        ex.extract(bf16, small, vs, tmp_path / "s", progress=False)
