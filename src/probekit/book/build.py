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

import json
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
# Chapter 1 extracts the one activation store chapters 2-4 read (chapter 4 also extracts its other models); chapters
# 5 and 6 extract their own. A chapter starts only after the chapters it reads from.
# Chapter 4's other stores are extracted by a step of their own (:mod:`.prefetch`) beside chapter 1.
STORES = "04-stores"
AFTER = {CHAPTERS[1]: (CHAPTERS[0],), CHAPTERS[2]: (CHAPTERS[0],), CHAPTERS[3]: (CHAPTERS[0], STORES)}
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
                    log: Callable = print, threads: int | None = None) -> Path:
    """papermill ``notebooks/<name>.ipynb`` -> ``out_dir/<name>.ipynb`` with ``parameters``; cwd = ``root``.
    ``threads``: the kernel's torch/OpenMP threads, passed as ``OMP_NUM_THREADS`` (the kernel inherits the build's
    environment: :func:`build_book` sets it for all kernels before starting them, so ``threads`` here only checks
    that it did)."""
    import papermill as pm

    if threads is not None and os.environ.get("OMP_NUM_THREADS") != str(threads):
        raise ProbekitError(f"chapter {name}: OMP_NUM_THREADS must be {threads} before its kernel starts")
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


def extract_stores(root: Path, parameters: Mapping, skip: Sequence[str], *, log: Callable = print) -> None:
    """The :data:`STORES` step: chapter 4's stores of every model but ``skip`` (:func:`.prefetch.prefetch`), in a
    process of its own (it inherits the build's thread settings, as a kernel does)."""
    spec = json.dumps({"root": str(root), "parameters": dict(parameters), "skip": list(skip)})
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "probekit.book.prefetch", spec], cwd=root, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-15:])
        raise ProbekitError(f"extracting chapter 4's stores ahead of it failed (exit {proc.returncode}):\n{tail}")
    log(f"[book] {STORES}: chapter 4's stores extracted in {time.perf_counter() - t:.0f} s")


def run_chapters(names: Sequence[str], execute: Callable[[str, int | None], object], *, jobs: int) -> list[str]:
    """Run ``execute(name, threads)`` for every chapter of ``names``, ``jobs`` at a time, each after the chapters of
    :data:`AFTER` that are also in ``names``, in ``names`` order otherwise; ``threads`` is 1 when ``jobs > 1`` (two
    kernels on two cores, no OpenMP oversubscription), else ``None`` (the kernel's default). The first failure stops
    new starts, waits for the running ones and is raised. Returns the order in which chapters started."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    threads = 1 if jobs > 1 else None
    todo, done, started, running = list(names), set(), [], {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while todo or running:
            ready = [n for n in todo if all(d in done or d not in names for d in AFTER.get(n, ()))]
            while ready and len(running) < jobs:
                n = ready.pop(0)
                todo.remove(n)
                started.append(n)
                running[pool.submit(execute, n, threads)] = n
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                name = running.pop(f)
                if f.exception() is not None:
                    wait(running)
                    raise f.exception()
                done.add(name)
    return started


def _default_model(root: Path) -> str:
    from .prefetch import notebook_defaults

    return str(notebook_defaults(root / "notebooks" / f"{CHAPTERS[0]}.ipynb")["model_id"])


def build_book(root: str | Path | None = None, *, out_dir: str | Path | None = None, model_id: str | None = None,
               model_ids: Sequence[str] | str | None = None, n_per_class: int | None = None,
               cache_dir: str | Path | None = None, parameters: Mapping | None = None,
               chapters: Sequence[str] | None = None, execute: bool = True, html: bool = True,
               kernel_name: str | None = None, jobs: int | None = None, log: Callable = print) -> Path:
    """Execute every chapter with papermill into ``out_dir`` (default ``<root>/book``) and build the HTML.

    ``model_id`` (chapters 01–03), ``model_ids`` (chapter 04), ``n_per_class`` and ``cache_dir`` override the
    notebooks' defaults (the embedded default model; ``<root>/.cache/probekit``); ``parameters`` adds any
    other notebook parameter (e.g. ``{"drop": 0.15}``). ``chapters`` picks a subset by name. ``jobs``: chapters
    executed at once (default: 2 on a machine with 2 or more cores, else 1), each kernel with one torch thread when
    more than one runs, a chapter starting only after the chapters whose activations it reads (:data:`AFTER`);
    with chapter 4 in the build, its other models' stores are extracted by a step of their own (:data:`STORES`,
    :func:`extract_stores`) beside chapter 1 (chapter 1's model is left to chapter 1). Returns the HTML directory
    (or ``out_dir`` when ``html=False``).
    """
    root = find_root(root) if root is None else Path(root).resolve()
    out = Path(out_dir).resolve() if out_dir else root / "book"
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir).resolve() if cache_dir else root / ".cache" / "probekit"
    # relative to the root when inside it (kernels run there), so no page shows this machine's paths
    common = {"cache_dir": str(cache.relative_to(root)) if cache.is_relative_to(root) else str(cache),
              **(parameters or {})}
    if n_per_class is not None:
        common["n_per_class"] = int(n_per_class)
    names = list(chapters or CHAPTERS)
    unknown = [c for c in names if c not in CHAPTERS]
    if unknown:
        raise ProbekitError(f"unknown chapter(s) {unknown}; chapters are {', '.join(CHAPTERS)}")
    t0 = time.perf_counter()
    if execute:
        params = {}
        for name in names:
            p = dict(common)
            if name == COMPARISON_CHAPTER:
                p.pop("model_id", None)
                if model_ids is not None:
                    p["model_ids"] = list(model_ids) if not isinstance(model_ids, str) else model_ids.split(",")
            elif model_id is not None:
                p["model_id"] = str(model_id)
            params[name] = p
        jobs = jobs if jobs is not None else min(2, os.cpu_count() or 1)
        if jobs < 1:
            raise ProbekitError(f"jobs must be a positive number of chapters run at once, got {jobs}")
        saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        if jobs > 1:  # every kernel inherits one thread: two kernels on two cores, no OpenMP oversubscription
            os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        steps = list(names)
        if COMPARISON_CHAPTER in names:  # chapter 4's other stores, extracted beside chapter 1
            steps.insert(1 if names[0] == CHAPTERS[0] else 0, STORES)
        skip = [params[CHAPTERS[0]].get("model_id") or _default_model(root)] if CHAPTERS[0] in names else []

        def step(name, threads):
            if name == STORES:
                return extract_stores(root, params[COMPARISON_CHAPTER], skip, log=log)
            return execute_chapter(name, root, out, params[name], kernel_name=kernel_name, log=log, threads=threads)

        try:
            run_chapters(steps, step, jobs=jobs)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    write_status_page(out)
    write_organisms_page(out)
    result = build_html(root, out, log=log) if html else out
    log(f"[book] done in {time.perf_counter() - t0:.0f} s")
    return result


__all__ = ["AFTER", "CHAPTERS", "STORES", "build_book", "build_html", "execute_chapter", "extract_stores", "find_root",
           "prepare_for_book", "run_chapters"]
