"""probekit: layer-by-layer probes of multimodal LLMs.

The public API reads like the method of paper A (arXiv 2508.20279)::

    from probekit import load_model, get_dataset, paper_a_variants, extract, probe_store

    lm = load_model("llava-hf/llava-1.5-7b-hf")                # or a local directory, or an organism name
    data = get_dataset("imagenet-dogs", "/data/imagenet", n_per_class=50)
    variants = paper_a_variants(data.concept, data.negation)  # anchor + lexical, negation, output format
    store = extract(lm, data, variants, "acts/llava15")        # resumable, cached by a key
    results = probe_store(store)                               # accuracy per (layer, variant) with CIs
    seg = segment_results(results)                             # paper A's stages

One entry per paper: ``probekit.paper_a`` (:mod:`probekit.papers.a_stages`), ``paper_b``
(:mod:`probekit.papers.b_visual_tokens`), ``paper_c`` (:mod:`probekit.papers.c_layer_selection`); the folders are
described in :mod:`probekit.papers`, the book's machinery in :mod:`probekit.book`, the organisms in
:mod:`probekit.organisms`.

Each name is imported from its submodule on first use, so ``import probekit`` (and ``probekit --help``) loads
neither torch nor transformers; the exceptions of :mod:`probekit.errors` are imported at once.
"""

import importlib
import sys
import types

from .errors import DataError, ModelLoadError, ProbekitError, PromptError, StoreError

# Public name -> submodule that defines it. Imported on first access (PEP 562), not here: most of them pull
# in torch/transformers (seconds), and ``probekit --help`` or ``from probekit.errors import ...`` needs none.
_LAZY = {
    "ImageDataset": "data", "get_dataset": "data",
    "extract": "extract", "template": "prompts",
    "SUPPORTED": "models", "LoadedModel": "models", "load_model": "models",
    "LayerProbes": "probes", "bootstrap_ci": "stats", "probe_store": "probes",
    "Variant": "prompts", "load_variants": "prompts", "paper_a_variants": "prompts",
    "ActivationStore": "store",
    "StageParams": "papers.a_stages.stages", "segment_results": "papers.a_stages.stages",
}
# One entry per paper: the paper's folder (a package), imported on first access.
_PAPERS = {"paper_a": "papers.a_stages", "paper_b": "papers.b_visual_tokens", "paper_c": "papers.c_layer_selection"}


def __getattr__(name: str):
    if name in _PAPERS:
        value = importlib.import_module(f".{_PAPERS[name]}", __name__)
        globals()[name] = value
        return value
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_PAPERS})


class _Package(types.ModuleType):
    """``probekit.extract`` is the function, as it was when this module imported it eagerly -- but the import
    system sets ``probekit.extract = <subpackage>`` whenever the subpackage ``probekit.extract`` is first
    imported (by any code). Bind the function of the same name instead, so the public name never turns
    into the module (the package stays reachable as ``sys.modules["probekit.extract"]``)."""

    def __setattr__(self, name: str, value) -> None:
        if _LAZY.get(name) == name and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__version__ = "0.1.0"

__all__ = [
    "SUPPORTED", "ActivationStore", "DataError", "ImageDataset", "LayerProbes", "LoadedModel", "ModelLoadError",
    "ProbekitError", "PromptError", "StageParams", "StoreError", "Variant", "__version__", "bootstrap_ci", "extract",
    "get_dataset", "load_model", "load_variants", "paper_a", "paper_a_variants", "paper_b", "paper_c", "probe_store",
    "segment_results", "template",
]
