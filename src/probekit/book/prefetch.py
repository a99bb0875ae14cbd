"""Chapter 4's activation stores, extracted ahead of its kernel: a ``probekit book`` step that runs beside chapter 1.

Chapter 4 reads the stores of several models; only the chapter-1 model's store comes from chapter 1. Extracting the
others is independent work, so ``probekit book`` runs it as its own step (:data:`probekit.book.build.STORES`) in the
lane chapter 1 leaves free, and chapter 4 then finds every store complete. The step makes the very call chapter 4
makes (:func:`probekit.papers.a_stages.chapter.book_runs`) with chapter 4's parameters — the notebook's defaults
(read from its parameters cell by papermill) under the build's overrides — so the stores are the ones chapter 4 asks
for, whatever its parameters are.

    python -m probekit.book.prefetch '{"root": ".", "parameters": {...}, "skip": ["smol-llava-ft"]}'
"""

from __future__ import annotations

import ast
import inspect
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import ProbekitError


def notebook_defaults(path: str | Path) -> dict:
    """The parameters cell's values of a notebook (``papermill.inspect_notebook``), each a Python literal."""
    import papermill as pm

    out = {}
    for name, p in pm.inspect_notebook(str(path)).items():
        try:
            out[name] = ast.literal_eval(p["default"])
        except (ValueError, SyntaxError):
            raise ProbekitError(f"{path}: parameter {name!r} = {p['default']} is not a literal; chapter 4's stores "
                                "cannot be extracted ahead of it") from None
    return out


def comparison_arguments(root: str | Path, parameters: Mapping) -> dict:
    """Keyword arguments of :func:`book_runs` for chapter 4: its notebook's defaults under ``parameters``."""
    from ..papers.a_stages.chapter import book_runs

    from .status import CHAPTERS

    merged = {**notebook_defaults(Path(root) / "notebooks" / f"{CHAPTERS[3]}.ipynb"), **parameters}
    names = inspect.signature(book_runs).parameters
    return {k: v for k, v in merged.items() if k in names}


def prefetch(root: str | Path, parameters: Mapping, skip: Sequence[str] = ()) -> list[str]:
    """Extract (cached) chapter 4's stores of every model but ``skip``; returns the models extracted or found."""
    from ..papers.a_stages.chapter import book_runs

    from .context import model_list

    args = comparison_arguments(root, parameters)
    models = [m for m in model_list(args.pop("model_ids")) if m not in set(skip)]
    if models:
        book_runs(models, **args)
    return models


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    spec = json.loads(argv[0])
    prefetch(spec["root"], spec.get("parameters", {}), spec.get("skip", ()))


if __name__ == "__main__":
    main()
