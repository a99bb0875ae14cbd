"""probekit: layer-by-layer probes of multimodal LLMs.

The public API reads like the method of paper A (arXiv 2508.20279):

    model = load_model("llava-hf/llava-1.5-7b-hf")           # or a local directory
    data = get_dataset("imagenet-dogs", root="/data/imagenet")
    variants = paper_a_variants(concept=data.concept, negation=data.negation)
    store = extract(model, data, variants, out="acts/")       # resumable, cached
    results = probe_store(store)                              # accuracy per layer x variant
"""

from .errors import DataError, ModelLoadError, ProbekitError, PromptError, StoreError

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "ModelLoadError",
    "ProbekitError",
    "PromptError",
    "StoreError",
    "__version__",
]
