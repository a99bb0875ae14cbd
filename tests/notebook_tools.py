"""Shared plumbing of the notebook tests: papermill with small parameters, outputs by MIME type, nbval."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SANITIZE = Path(__file__).with_name("nbval_sanitize.cfg")
RECORD = "application/vnd.probekit.record+json"


def run_papermill(name, out_dir, params):
    """Execute ``notebooks/<name>.ipynb`` with ``params`` into ``out_dir/<name>.ipynb`` (cwd = the repo root)."""
    import papermill as pm

    out = Path(out_dir) / f"{name}.ipynb"
    pm.execute_notebook(str(NOTEBOOKS / f"{name}.ipynb"), str(out), parameters=params, cwd=str(ROOT),
                        progress_bar=False, log_output=False, kernel_name="python3")
    return out


def outputs(nb, mime):
    for cell in nb.cells:
        for o in cell.get("outputs", []):
            if mime in o.get("data", {}):
                yield o["data"][mime]


def assert_nbval(path):
    """nbval re-executes the executed notebook in a fresh kernel and compares every output (sanitized ids)."""
    path = Path(path)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", str(path), "--nbval-current-env", "--nbval-sanitize-with",
         str(SANITIZE), "-p", "no:cacheprovider", "-q", "--no-header", "--rootdir", str(path.parent), "-c", "/dev/null"],
        capture_output=True, text=True, cwd=path.parent, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
