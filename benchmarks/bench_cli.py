"""CLI start-up: ``probekit --help`` vs ``python -c "import torch, transformers"``, in fresh processes.

    .venv/bin/python benchmarks/bench_cli.py               # median of 5 runs of each

The target: ``probekit --help`` in less than half the time of importing torch and transformers on the same
machine (what ``--help`` took when the package imported them eagerly). The probekit side is the console script
``probekit`` when it is installed beside this interpreter (what a user types), else ``python -m probekit.cli``
(``--module`` forces the latter). The two commands alternate, run by run, so a busy machine slows both alike;
one untimed run of each first warms the file cache. Wall time of the whole process, start to exit.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path


def wall(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each command (default 5)")
    ap.add_argument("--module", action="store_true", help="time `python -m probekit.cli` even if the script exists")
    a = ap.parse_args(argv)
    script = Path(sys.executable).with_name("probekit")
    probekit = [str(script)] if script.is_file() and not a.module else [sys.executable, "-m", "probekit.cli"]
    probekit += ["--help"]
    baseline = [sys.executable, "-c", "import torch, transformers"]
    print(f"probekit: {shlex.join(probekit)}\nbaseline: {shlex.join(baseline)}\n{a.runs} runs each, alternating", flush=True)
    for cmd in (baseline, probekit):  # warm-up
        wall(cmd)
    times = {"baseline": [], "probekit": []}
    for _ in range(a.runs):
        times["baseline"].append(wall(baseline))
        times["probekit"].append(wall(probekit))
    b, p = statistics.median(times["baseline"]), statistics.median(times["probekit"])
    for name, ts in times.items():
        print(f"{name}: median {statistics.median(ts):.3f} s (runs: {', '.join(f'{t:.3f}' for t in ts)})")
    print(f"ratio probekit / baseline: {p / b:.3f} (target < 0.5: {'met' if p / b < 0.5 else 'NOT met'})")


if __name__ == "__main__":
    main()
