"""Checking a notebook's parameters (as papermill injects them) before any work starts.

Papermill passes ``-p name value`` through as Python literals, so a mistyped value arrives as the wrong type;
:func:`check_params` turns each mistake into one :class:`~probekit.errors.ProbekitError` naming the parameter
and the fix, before a model is loaded or a file is written.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import ProbekitError

_SPEC = {
    # name: (accepted types, description)
    "model_id": ((str,), "a hub id, local directory or organism name"),
    "model_ids": ((list, tuple), "a list of hub ids, local directories or organism names"),
    "dataset": ((str,), "a dataset name"),
    "data_root": ((str, type(None)), "a folder path or None"),
    "n_per_class": ((int, type(None)), "a positive integer or None (all images)"),
    "variants": ((str, list, tuple), "'paper-a', a YAML file path, or a list of variant families"),
    "device": ((str,), "auto, cpu, cuda or cuda:N"),
    "dtype": ((str,), "auto, float32, float16 or bfloat16"),
    "cache_dir": ((str, type(None)), "a folder path or None"),
    "seed": ((int,), "an integer"),
}


def check_params(params: Mapping) -> dict:
    """Validate notebook parameters; returns them unchanged when all are usable."""
    from ..data import DATASETS
    from ..models import DTYPES
    from ..prompts import load_variants

    p = dict(params)
    for name, value in p.items():
        if name not in _SPEC:
            continue
        types, what = _SPEC[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ProbekitError(f"parameter {name}={value!r} ({type(value).__name__}) must be {what}")
    if "n_per_class" in p and p["n_per_class"] is not None and p["n_per_class"] < 1:
        raise ProbekitError(f"parameter n_per_class={p['n_per_class']} must be at least 1 (or None for all images)")
    if "dataset" in p and p["dataset"] not in DATASETS:
        raise ProbekitError(f"parameter dataset={p['dataset']!r} is unknown; use one of {', '.join(DATASETS)}")
    if "dtype" in p and p["dtype"] != "auto" and p["dtype"] not in DTYPES:
        raise ProbekitError(f"parameter dtype={p['dtype']!r} is unknown; use auto, {', '.join(DTYPES)}")
    if "model_ids" in p:
        if not p["model_ids"] or not all(isinstance(m, str) for m in p["model_ids"]):
            raise ProbekitError(f"parameter model_ids={p['model_ids']!r} must be a non-empty list of model names")
    if "variants" in p:
        v = p["variants"]
        if isinstance(v, (list, tuple)):
            load_variants("paper-a", families=list(v))  # raises naming the unknown family
        else:
            load_variants(v)  # 'paper-a' or a YAML path; raises naming the problem
    return p
