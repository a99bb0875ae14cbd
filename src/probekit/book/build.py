"""Build the book: papermill runs every chapter notebook on the embedded default, jupyter-book renders the
executed notebooks as they are (execution off).

    from probekit.book.build.build import build_book
    build_book()                                   # book/_build/html, every chapter on the default model
    build_book(model_id="/models/my-llava", model_ids="a,b", n_per_class=20)   # other models / sizes

Steps: (1) ``notebooks/NN_*.ipynb`` -> ``book/NN_*.ipynb`` with papermill (parameters injected; activations
cached under ``cache_dir``, so a second build re-uses them and only re-fits the probes); (2) each executed
notebook is prepared for the page: papermill's injected-parameters cell is collapsed (``hide-input``), saved
widget state is dropped (the book shows the explorer's static view instead); (3) ``jupyter-book build``
with the top-level ``_config.yml`` (``execute_notebooks: off``) writes ``book/_build/html``. The vega
libraries are vendored in ``book/_static/vega`` and loaded by every page, so charts render offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from ..errors import ProbekitError
from .organisms_page import write_organisms_page
from .status import CHAPTERS, write_status_page

SINGLE_MODEL_CHAPTERS = CHAPTERS[:3]
COMPARISON_CHAPTER = CHAPTERS[3]
HIDE_TAG = "hide-input"
VEGA_FILES = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")


def find_root(start: str | Path | None = None) -> Path:
    """The book root: the directory holding ``_config.yml``, ``_toc.yml`` and ``notebooks/`` (the repository's
    top level), searched from ``start`` (default: the working directory, then this package's checkout)."""
    cands = []
    if start is not None:
        cands.append(Path(start).resolve())
    cands += [Path.cwd().resolve(), Path(__file__).resolve().parents[2]]
    for c in cands:
        for d in (c, *c.parents):
            if (d / "_config.yml").is_file() and (d / "_toc.yml").is_file() and (d / "notebooks").is_dir():
                return d
    raise ProbekitError(
        "cannot find the book root (a folder with _config.yml, _toc.yml and notebooks/); run from the probekit "
        "checkout or pass root="
    )


def prepare_for_book(path: str | Path) -> None:
    """Collapse papermill's injected-parameters cell, drop saved widget state (in place)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if ("injected-parameters" in tags or "parameters" in tags) and HIDE_TAG not in tags:
            cell.metadata["tags"] = [*tags, HIDE_TAG]
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, str(path))


def execute_chapter(name: str, root: Path, out_dir: Path, parameters: Mapping, *, kernel_name: str | None = None,
                    log: Callable = print) -> Path:
    """papermill ``notebooks/<name>.ipynb`` -> ``out_dir/<name>.ipynb`` with ``parameters``; cwd = ``root``."""
    import papermill as pm

    src = root / "notebooks" / f"{name}.ipynb"
    if not src.is_file():
        raise ProbekitError(f"chapter notebook {str(src)!r} is missing")
    out = out_dir / f"{name}.ipynb"
    t = time.perf_counter()
    try:
        pm.execute_notebook(str(src), str(out), parameters=dict(parameters), cwd=str(root), kernel_name=kernel_name,
                            progress_bar=False, log_output=False, request_save_on_cell_execute=False)
    except pm.PapermillExecutionError as e:
        raise ProbekitError(f"chapter {name} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                            f"see the executed notebook {out}") from None
    prepare_for_book(out)
    log(f"[book] {name}: executed in {time.perf_counter() - t:.0f} s -> {out}")
    return out


def build_html(root: Path, out_dir: Path, *, log: Callable = print) -> Path:
    """``jupyter-book build`` of ``root`` (top-level ``_config.yml``/``_toc.yml``) into ``out_dir/_build/html``."""
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root), "--path-output", str(out_dir),
           "--builder", "html"]
    t = time.perf_counter()
    env = {**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env)
    html = out_dir / "_build" / "html"
    if proc.returncode != 0 or not (html / "index.html").is_file():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise ProbekitError(f"jupyter-book build failed (exit {proc.returncode}):\n{tail}")
    missing = [f for f in VEGA_FILES if not (html / "_static" / "vega" / f).is_file()]
    if missing:
        raise ProbekitError(f"the built book lacks the vendored vega libraries {missing} in _static/vega")
    log(f"[book] html built in {time.perf_counter() - t:.0f} s -> {html}")
    return html


def build_book(root: str | Path | None = None, *, out_dir: str | Path | None = None, model_id: str | None = None,
               model_ids: Sequence[str] | str | None = None, n_per_class: int | None = None,
               cache_dir: str | Path | None = None, parameters: Mapping | None = None,
               chapters: Sequence[str] | None = None, execute: bool = True, html: bool = True,
               kernel_name: str | None = None, log: Callable = print) -> Path:
    """Execute every chapter with papermill into ``out_dir`` (default ``<root>/book``) and build the HTML.

    ``model_id`` (chapters 01–03), ``model_ids`` (chapter 04), ``n_per_class`` and ``cache_dir`` override the
    notebooks' defaults (the embedded default model; ``<root>/.cache/probekit``); ``parameters`` adds any
    other notebook parameter (e.g. ``{"drop": 0.15}``). ``chapters`` picks a subset by name. Returns the
    HTML directory (or ``out_dir`` when ``html=False``).
    """
    root = find_root(root) if root is None else Path(root).resolve()
    out = Path(out_dir).resolve() if out_dir else root / "book"
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir).resolve() if cache_dir else root / ".cache" / "probekit"
    common = {"cache_dir": str(cache), **(parameters or {})}
    if n_per_class is not None:
        common["n_per_class"] = int(n_per_class)
    names = list(chapters or CHAPTERS)
    unknown = [c for c in names if c not in CHAPTERS]
    if unknown:
        raise ProbekitError(f"unknown chapter(s) {unknown}; chapters are {', '.join(CHAPTERS)}")
    t0 = time.perf_counter()
    if execute:
        for name in names:
            p = dict(common)
            if name == COMPARISON_CHAPTER:
                p.pop("model_id", None)
                if model_ids is not None:
                    p["model_ids"] = list(model_ids) if not isinstance(model_ids, str) else model_ids.split(",")
            elif model_id is not None:
                p["model_id"] = str(model_id)
            execute_chapter(name, root, out, p, kernel_name=kernel_name, log=log)
    write_status_page(out)
    write_organisms_page(out)
    result = build_html(root, out, log=log) if html else out
    log(f"[book] done in {time.perf_counter() - t0:.0f} s")
    return result


__all__ = ["CHAPTERS", "build_book", "build_html", "execute_chapter", "find_root", "prepare_for_book"]
