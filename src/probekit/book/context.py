"""What every chapter shares: its run's caption, machine-readable records for the status page, the parameters
table, quiet model loading and where a chapter's cache lives.

A chapter's run object (paper A's :class:`probekit.papers.a_stages.chapter.Run`, paper B's ``TokensRun``, paper C's
``VisionRun``) is a :class:`ChapterRun`: it names its model, data, image count and seed, and every chart caption
comes from :meth:`ChapterRun.caption`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..store import key_sha256
from .plots import caption as _caption_text

RECORD_MIME = "application/vnd.probekit.record+json"


class ChapterRun:
    """Mixin of a chapter's run: subclasses have ``model_id``, ``seed``, ``data_label`` and ``n_images``."""

    def caption(self, extra: str | None = None, n: int | str | None = None) -> str:
        """The caption of a chart of this run: model, data, n (default: the run's images) and seed."""
        return _caption_text(model=self.model_id, data=self.data_label,
                             n=n if n is not None else f"{self.n_images} images", seed=self.seed, extra=extra)


def jsonable(x):
    """numpy scalars and arrays, DataFrames (as records) and anything else (as text) for a JSON record."""
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, pd.DataFrame):
        return json.loads(x.to_json(orient="records"))
    return str(x)


def record(name: str, payload: dict) -> None:
    """Leave a machine-readable result in the executed notebook (a display output of type
    ``application/vnd.probekit.record+json``; the cell is tagged ``remove-cell``, so the page does not show
    it). :mod:`probekit.book.status` collects the records for the reproduction-status page."""
    from IPython.display import display

    display({RECORD_MIME: {"name": name, **json.loads(json.dumps(payload, default=jsonable))}}, raw=True)


def parameters_table(params: dict) -> pd.DataFrame:
    """Check the parameters a chapter runs with (:func:`probekit.book.params.check_params`: one clear error for a
    mistyped value, before any work) and show them as a two-column table."""
    from .params import check_params

    check_params(params)
    return pd.DataFrame({"parameter": list(params), "value": [repr(v) for v in params.values()]}).set_index("parameter")


def quiet() -> None:
    """No progress bars or deprecation notices from transformers in chapter outputs (widgets in a kernel, noise,
    and output that only a first, uncached run prints — which nbval would flag as a difference)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers(\.|$)")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except Exception:  # pragma: no cover - cosmetic only
        pass


def load(model_id: str, device: str = "cpu", dtype: str = "float32"):
    """Load a model for a chapter, quietly (:func:`quiet`)."""
    from ..models import load_model

    quiet()
    return load_model(model_id, dtype=dtype, device=device)


def slug(s: str) -> str:
    """A file-name-safe short form of a model id (its last 60 characters)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s)).strip("_")[-60:] or "model"


def cache_path(cache_dir, kind: str, model_id: str, key, *, prefix: str = "") -> Path:
    """``cache_dir/<kind>/<model slug>/<prefix><16 hex digits of the cache key>``: where a chapter's store goes."""
    return Path(cache_dir) / kind / slug(model_id) / f"{prefix}{key_sha256(key, 16)}"


def model_list(model_ids) -> list[str]:
    """A list of model ids from a list, or from one comma-separated string (``papermill -p model_ids a,b``)."""
    if isinstance(model_ids, str):
        model_ids = [m.strip() for m in model_ids.split(",")]
    ids = [str(m) for m in model_ids if str(m)]
    if not ids:
        raise ValueError("model_ids is empty; give at least one model")
    return ids


__all__ = ["RECORD_MIME", "ChapterRun", "cache_path", "jsonable", "load", "model_list", "parameters_table", "quiet",
           "record", "slug"]
