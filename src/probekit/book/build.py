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

CHAPTERS = ("01_setup", "02_four_stages", "03_decision_vs_format", "04_architecture_comparison", "05_visual_tokens",
            "06_visual_layer_selection")
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


RECORD_MIME = "application/vnd.probekit.record+json"
STATUS_PAGE = "reproduction-status.md"


def collect_records(paths) -> dict:
    """``{record name: payload}`` from the ``probekit.papers.a_stages.chapter.record`` outputs of executed notebooks."""
    import nbformat

    out = {}
    for p in paths:
        p = Path(p)
        if not p.is_file():
            continue
        nb = nbformat.read(str(p), as_version=4)
        for cell in nb.cells:
            for o in cell.get("outputs", []):
                d = o.get("data", {}).get(RECORD_MIME)
                if d:
                    out[d["name"]] = dict(d)
    return out


def _rng(r) -> str:
    return "—" if not r else (f"{r[0]}" if r[0] == r[1] else f"{r[0]}–{r[1]}")


def _depth(r, blocks) -> str:
    return "" if not r or not blocks else f" (depth {r[0] / blocks:.2f}–{r[1] / blocks:.2f})"


def status_page(records: Mapping) -> str:
    """The reproduction-status page: each claim of paper A, the reported value (only from
    ``shared/reference/papers.md``, labelled confirmed or secondary) and the value measured by this build."""
    st = records.get("four_stages")
    cmp_ = records.get("comparison")
    dec = records.get("decision_format")
    na = "not measured in this build"
    lines = [
        "# Reproduction status",
        "",
        "Each claim of paper A (arXiv 2508.20279) — and, in rows marked (B) and (C), of papers B (arXiv 2510.04819)",
        "and C (arXiv 2504.21447) — beside what this build measured. **Reported** values are taken",
        "only from the project's reference notes (`shared/reference/papers.md`) and labelled **confirmed** (the",
        "paper's abstract or official material) or **secondary** (third-party summaries, not checked against the",
        "paper's full text). Where the reference holds no number, none is shown. **Measured** values come from",
        "the chapters of this build, on the model named beside them — model organisms, not the paper's models, so",
        "agreement or disagreement is about the *pattern*, never a replication of the paper's numbers.",
        "",
        "_This page is generated by `probekit book` from the executed chapters._",
        "",
    ]
    if st:
        lines += [f"Chapter 2 ran on **{st['model']}** ({st['blocks']} decoder blocks), {st['data']}, "
                  f"n = {st['n_images']} images, seed {st['seed']}; segmentation thresholds drop = "
                  f"{st['params']['drop']}, info = {st['params']['info']}, smooth = {st['params']['smooth']}.", ""]
    lines += ["## Claims", "", "| claim | reported (source) | measured here | model |", "|---|---|---|---|"]

    def row(claim, reported, measured, model):
        lines.append(f"| {claim} | {reported} | {measured} | {model} |")

    seq = ", ".join(st["stage_sequence"]) if st else None
    row("Early layers: visual grounding; middle: lexical integration and semantic reasoning; final: answer "
        "decoding", "stated qualitatively (**confirmed**, abstract)",
        f"stages found, in order: {seq or 'none'}" if st else na, f"`{st['model']}`" if st else "—")
    if st:
        S = st["stages"]
        b = st["blocks"]
        for name, rep in (("visual grounding", "layers 1–4"), ("lexical integration", "layers 5–13"),
                          ("semantic reasoning", "layers 12–15"), ("answer decoding", "layers 16+")):
            row(f"Stage range: {name} (LLaVA-1.5)", f"{rep} (**secondary**)",
                f"layers {_rng(S[name])}{_depth(S[name], b)}" if S[name] else "no layers (stage empty)",
                f"`{st['model']}`")
    else:
        row("Stage ranges (LLaVA-1.5)", "grounding 1–4, lexical 5–13, semantic 12–15, decoding 16+ (**secondary**)",
            na, "—")
    qwen = (cmp_ or {}).get("models", {}).get("qwen2vl-organism")
    for name, rep in (("visual grounding", "layer 1"), ("lexical integration", "not given"),
                      ("semantic reasoning", "layers 10–20"), ("answer decoding", "layers 21–28")):
        rep_s = f"{rep} (**secondary**)" if rep != "not given" else "not given in the reference"
        qs = qwen["stages"][name] if qwen else None
        meas = (na if not qwen else f"layers {_rng(qs)}{_depth(qs, qwen['blocks'])}" if qs else "no layers (stage empty)")
        row(f"Stage range: {name} (Qwen2-VL)", rep_s, meas, "`qwen2vl-organism`" if qwen else "—")
    if st:
        ld = st.get("lexical_drop_max")
        where = "inside the lexical-integration stage" if st.get("lexical_drop_in_stage") else "over all layers (no lexical stage found)"
        meas = f"largest lexical-family drop {where}: {ld:.2f} accuracy" if ld is not None else na
    row("Lexical variants drop probe accuracy in the lexical-integration stage (LLaVA-1.5)",
        "by ~40 % (**secondary**)", meas if st else na, f"`{st['model']}`" if st else "—")
    pairs = (cmp_ or {}).get("pairs") or []
    for factor, claim in (("tokenizer", "Stage structure stable across visual tokenization"),
                          ("instruction data", "Stage structure stable across instruction-tuning data"),
                          ("pretraining corpus", "Stage structure stable across pretraining corpus")):
        p = next((x for x in pairs if x.get("factor") == factor), None)
        note = " (our organism varies the *text* tokenizer, not the visual tokenization)" if factor == "tokenizer" else ""
        meas = (f"{'same' if p['same stage sequence'] else 'different'} stage sequence; mean anchor-curve "
                f"difference {p['mean |Δ accuracy| (anchor, by depth)']:.3f}{note}") if p else na
        row(claim, "stated qualitatively (**confirmed**, abstract)", meas,
            f"`{p['model']}` vs `{p['reference']}`" if p else "—")
    p = next((x for x in pairs if x.get("factor") == "base LLM"), None)
    if p and cmp_:
        ms = cmp_["models"]
        a, r = ms[p["model"]], ms[p["reference"]]
        def starts(m):
            return ", ".join(f"{k.split()[0]} {m['stages'][k][0] / m['blocks']:.2f}" for k in m["stages"] if m["stages"][k])
        meas = (f"stage starts by normalized depth — {p['model']}: {starts(a)}; {p['reference']}: {starts(r)} "
                "(not a controlled pair: vision tower and image tokens differ too)")
    row("Layer allocation shifts with the base LLM", "stated qualitatively (**confirmed**, abstract)",
        meas if p else na, f"`{p['model']}` vs `{p['reference']}`" if p else "—")
    if dec:
        shared = dec.get("shared_layers") or []
        meas = (f"decision shared across formats at layer(s) {', '.join(map(str, shared)) or 'none'}; "
                + (f"formats part at layer {dec['parting_layer']} of {dec['blocks']}" if dec.get("parting_layer")
                   is not None else "no parting layer"))
    row("Where the decision parts from the output format", "no number in the reference", meas if dec else na,
        f"`{dec['model']}`" if dec else "—")
    row("Probe accuracy values, image counts, probe regularization", "**unknown** (not in the reference)",
        "see chapter 2" if st else na, f"`{st['model']}`" if st else "—")
    from ..papers.b_visual_tokens.chapter import RECORD_NAME as _VT
    from ..papers.b_visual_tokens.chapter import status_rows as _vt_rows
    from ..papers.c_layer_selection.claims import RECORD_NAME as _VL
    from ..papers.c_layer_selection.claims import status_rows as _vl_rows

    lines += _vt_rows(records.get(_VT))  # paper B (chapter 5), rows marked (B), same table
    lines += _vl_rows(records.get(_VL))  # paper C (chapter 6), rows marked (C), same table
    lines += ["", "## Notes", "",
              "- Rows marked (B) are paper B's (arXiv 2510.04819) claims; chapter 5 measures them on the image tokens' "
              "keys and values with ground truth at the resolution of the image-token grid; temporal correspondence, "
              "referring expressions and the BLINK analysis were not run.",
              "- Rows marked (C) are paper C's (arXiv 2504.21447) claims; chapter 6 measures them with linear probes "
              "on the vision tower's layers — paper C's main experiment (one MLLM trained per layer choice) was not "
              "run.",
              "- Layer numbering: the reference notes suggest paper A numbers decoder blocks 1..L; probekit stores "
              "layer 0 (embeddings) and 1..L (blocks), so block numbers coincide.",
              "- LLaVA-Next-LLaMA-3 \"shares similar stages with LLaVA-1.5\" (**secondary**); no ranges are known.",
              "- The paper's models are full-size MLLMs (Qwen2-VL-7B has 28 decoder layers, per the reference notes); "
              "the organisms have 6–8 decoder blocks, so absolute layer numbers "
              "are not comparable — compare the order of the stages and normalized depth.", ""]
    return "\n".join(lines)


def write_status_page(out_dir: Path, names: Sequence[str] = CHAPTERS) -> Path:
    records = collect_records([Path(out_dir) / f"{n}.ipynb" for n in names])
    path = Path(out_dir) / STATUS_PAGE
    path.write_text(status_page(records))
    return path


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
    result = build_html(root, out, log=log) if html else out
    log(f"[book] done in {time.perf_counter() - t0:.0f} s")
    return result


__all__ = ["CHAPTERS", "build_book", "build_html", "execute_chapter", "find_root", "prepare_for_book"]
