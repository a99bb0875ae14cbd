import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach a hub
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest  # noqa: E402


def pytest_report_header(config):
    """Which releases this run tests (the locked set, or `make test-latest`'s newest transformers)."""
    from importlib.metadata import PackageNotFoundError, version

    def v(dist):
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    return "probekit on: " + ", ".join(f"{d} {v(d)}" for d in ("torch", "torchvision", "transformers", "tokenizers",
                                                               "huggingface-hub"))


FAMILIES = ("llava", "llava_next", "qwen2_vl", "qwen2_5_vl")
ARCHITECTURES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}
TEXT_LAYERS = 3


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """One saved tiny random-weight model per supported class (built offline once per session)."""
    from probekit.models.build import build_tiny

    root = tmp_path_factory.mktemp("tiny")
    return {f: build_tiny(f, root / f, seed=0, text_layers=TEXT_LAYERS) for f in FAMILIES}


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    from probekit.models import load_model

    return {f: load_model(str(d), dtype="float32", device="cpu") for f, d in tiny_dirs.items()}


@pytest.fixture(scope="session")
def fashion():
    from probekit.data import get_dataset

    return get_dataset("fashion-mnist", n_per_class=3, seed=0)
