"""Interrupted runs and concurrent writers, tried as a user would: through the CLI, in real processes."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from probekit.store import ActivationStore

N_KILLS = 20


def extract_cmd(model_dir, out):
    return [sys.executable, "-m", "probekit.cli", "extract", "--model", str(model_dir), "--dataset", "fashion-mnist",
            "--n-per-class", "2", "--shard-size", "2", "--families", "lexical", "--out", str(out), "--device", "cpu", "--dtype",
            "float32", "--batch-size", "3"]


def env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def shards(root):
    return sorted(p.name for p in root.glob("shard-*.safetensors")) if root.exists() else []


def assert_same_store(a, b):
    A, B = ActivationStore.open(a), ActivationStore.open(b)
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    for v in A.variant_names:
        np.testing.assert_array_equal(A.features(v), B.features(v))
    assert A.answers().equals(B.answers())


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(tiny_dirs, tmp_path):
    model = tiny_dirs["llava"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    t0 = time.monotonic()
    subprocess.run(extract_cmd(model, ref), check=True, env=env(), capture_output=True)
    full_time = time.monotonic() - t0
    n_shards = len(shards(ref))
    rng = random.Random(0)
    for _ in range(N_KILLS):
        before = shards(out)
        proc = subprocess.Popen(extract_cmd(model, out), env=env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=rng.uniform(0.2, full_time))  # the kill lands at a random moment
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        after = shards(out)
        assert set(before) <= set(after)  # nothing that was complete is ever lost or rewritten away
        if len(after) == n_shards:  # finished before the kill: start over to keep killing mid-run
            for p in out.glob("shard-*"):
                p.unlink()
    # every re-run completes and computes only what is missing
    before = shards(out)
    r = subprocess.run(extract_cmd(model, out), env=env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(shards(out)) == n_shards
    assert not list(out.glob(".*.tmp-*"))  # temporaries of killed runs are cleaned up
    mtimes = {p: (out / p).stat().st_mtime_ns for p in before}
    assert all((out / p).stat().st_mtime_ns == m for p, m in mtimes.items())  # done shards were not recomputed
    assert_same_store(out, ref)


@pytest.mark.slow
def test_two_processes_extracting_into_one_store(tiny_dirs, tmp_path):
    model = tiny_dirs["llava"]
    ref, out = tmp_path / "ref", tmp_path / "shared"
    subprocess.run(extract_cmd(model, ref), check=True, env=env(), capture_output=True)
    procs = [subprocess.Popen(extract_cmd(model, out), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    assert_same_store(out, ref)
