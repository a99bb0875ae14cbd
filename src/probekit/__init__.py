"""probekit: layer-by-layer probes of multimodal LLMs.

The public API reads like the method of paper A (arXiv 2508.20279)::

    from probekit import load_model, get_dataset, paper_a_variants, extract, probe_store

    lm = load_model("llava-hf/llava-1.5-7b-hf")                # or a local directory, or an organism name
    data = get_dataset("imagenet-dogs", "/data/imagenet", n_per_class=50)
    variants = paper_a_variants(data.concept, data.negation)  # anchor + lexical, negation, output format
    store = extract(lm, data, variants, "acts/llava15")        # resumable, cached by a key
    results = probe_store(store)                               # accuracy per (layer, variant) with CIs

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
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
    "ProbekitError", "PromptError", "StoreError", "Variant", "__version__", "bootstrap_ci", "extract",
    "get_dataset", "load_model", "load_variants", "paper_a_variants", "probe_store", "template",
]
