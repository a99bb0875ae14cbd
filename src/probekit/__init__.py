"""probekit: layer-by-layer probes of multimodal LLMs.

The public API reads like the method of paper A (arXiv 2508.20279)::

    from probekit import load_model, get_dataset, paper_a_variants, extract, probe_store

    lm = load_model("llava-hf/llava-1.5-7b-hf")                # or a local directory, or an organism name
    data = get_dataset("imagenet-dogs", "/data/imagenet", n_per_class=50)
    variants = paper_a_variants(data.concept, data.negation)  # anchor + lexical, negation, output format
    store = extract(lm, data, variants, "acts/llava15")        # resumable, cached by a key
    results = probe_store(store)                               # accuracy per (layer, variant) with CIs
"""

from .data import ImageDataset, get_dataset
from .errors import DataError, ModelLoadError, ProbekitError, PromptError, StoreError
from .extract import extract, template
from .models import SUPPORTED, LoadedModel, load_model
from .probes import LayerProbes, bootstrap_ci, probe_store
from .prompts import Variant, load_variants, paper_a_variants
from .store import ActivationStore

__version__ = "0.1.0"

__all__ = [
    "SUPPORTED", "ActivationStore", "DataError", "ImageDataset", "LayerProbes", "LoadedModel", "ModelLoadError",
    "ProbekitError", "PromptError", "StoreError", "Variant", "__version__", "bootstrap_ci", "extract",
    "get_dataset", "load_model", "load_variants", "paper_a_variants", "probe_store", "template",
]
