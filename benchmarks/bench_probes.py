"""All-layer probes: the per-layer scikit-learn loop vs probekit's batched torch solver, on the same features.

    .venv/bin/python benchmarks/bench_probes.py            # 4096 features, 33 layers, 120 classes (LLaVA-1.5-7B-like)

Features are synthetic but shaped like a 7B MLLM's: 33 layers (embedding + 32 blocks) of width 4096, 120
classes (Stanford dogs) whose signal grows with depth, on top of a strong low-rank nuisance component and
per-feature offsets/scales (so standardisation matters). Both solvers minimise the same objective with the
same stopping rule (every gradient entry below ``tol``); the script times both in one run, with the same
thread count, and prints the ratio and the held-out accuracies.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from probekit.probes import LayerProbes


def features(n_per_class: int, classes: int, layers: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    protos = rng.normal(size=(classes, 48)).astype(np.float32)
    X = np.empty((len(y), layers, dim), np.float32)
    for layer in range(layers):
        basis = rng.normal(size=(48, dim)).astype(np.float32) / np.sqrt(48)
        nuisance = rng.normal(size=(8, dim)).astype(np.float32)
        signal = 1.2 * layer / (layers - 1)  # layer 0: chance; the last: well separated
        X[:, layer] = (signal * protos[y] @ basis + 3 * rng.normal(size=(len(y), 8)).astype(np.float32) @ nuisance
                       + rng.normal(size=(len(y), dim)).astype(np.float32))
        X[:, layer] = X[:, layer] * rng.uniform(0.2, 5.0, dim).astype(np.float32) + rng.normal(0, 3, dim).astype(np.float32)
    return X, y


def _iters(p: LayerProbes) -> list[int]:
    return [int(np.max(q[-1].n_iter_)) for q in p.probes_] if hasattr(p, "probes_") else list(p.n_iter_)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=33)
    ap.add_argument("--classes", type=int, default=120)
    ap.add_argument("--train-per-class", type=int, default=4)
    ap.add_argument("--test-per-class", type=int, default=3)
    ap.add_argument("--C", type=float, default=1.0)
    ap.add_argument("--tol", type=float, default=1e-5, help="stopping rule of both solvers (LayerProbes' default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="BLAS/torch threads for both sides (1: robust to a busy machine)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    threadpool_limits(a.threads)
    X, y = features(a.train_per_class + a.test_per_class, a.classes, a.layers, a.dim, a.seed)
    test = np.tile(np.arange(a.train_per_class + a.test_per_class) >= a.train_per_class, a.classes)
    print(f"features: {len(y)} items ({(~test).sum()} train, {test.sum()} test) x {a.layers} layers x {a.dim}, "
          f"{a.classes} classes, C={a.C}, tol={a.tol}, {a.threads} thread(s) each")
    res = {}
    for solver in ("sklearn", "torch"):
        t0 = time.perf_counter()
        p = LayerProbes(C=a.C, solver=solver, seed=a.seed, tol=a.tol).fit(X[~test], y[~test])
        res[solver] = (time.perf_counter() - t0, p.score(X[test], y[test]))
        print(f"{solver:8s} fit {res[solver][0]:8.1f} s   iterations/layer {np.mean(_iters(p)):.0f}   held-out accuracy mean {res[solver][1].mean():.4f} "
              f"(layer 0 {res[solver][1][0]:.3f}, last {res[solver][1][-1]:.3f})", flush=True)
    (ts, acc_s), (tt, acc_t) = res["sklearn"], res["torch"]
    diff = np.abs(acc_s - acc_t)
    print(f"ratio sklearn/torch = {ts / tt:.1f}x   accuracy difference: mean {100 * abs(acc_s.mean() - acc_t.mean()):.2f} "
          f"points, max over layers {100 * diff.max():.2f} points")
    print("per-layer accuracy (sklearn / torch):", " ".join(f"{s:.3f}/{t:.3f}" for s, t in zip(acc_s, acc_t)))


if __name__ == "__main__":
    main()
