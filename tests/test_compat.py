"""probekit passes and reads the key/value cache under the name the installed transformers uses (compat.py),
with no deprecation notice from transformers, as a Python warning or through its logger, on either side of
5.24's ``past_key_values`` -> ``cache`` rename. On the locked transformers (5.23) nothing is renamed and these
pass trivially; ``make test-latest`` runs them on the newest 5.x."""

import contextlib
import inspect
import logging
import warnings

import pytest
import torch
from conftest import FAMILIES

from probekit.compat import cache_kwargs, output_cache
from probekit.extract.kv import image_states, text_states
from probekit.prompts import template


@contextlib.contextmanager
def no_deprecation_notices():
    """Fails if the block warns (FutureWarning / DeprecationWarning) or transformers logs a warning. The tests'
    conftest silences transformers' logger, and ``warning_once`` says a thing only once per process: both undone
    here for the block."""
    from transformers.utils import logging as hf_logging

    logged = []

    class Record(logging.Handler):
        def emit(self, record):
            logged.append(f"{record.name}: {record.getMessage()}")

    handler, logger, before = Record(logging.WARNING), hf_logging.get_logger(), hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    hf_logging.warning_once.cache_clear()
    logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(before)
    notices = [f"{w.category.__name__} ({w.filename}:{w.lineno}): {w.message}" for w in caught
               if issubclass(w.category, (FutureWarning, DeprecationWarning))]
    assert not notices + logged


@pytest.mark.parametrize("family", FAMILIES)
def test_cache_argument_is_one_the_forward_takes(family, tiny_models):
    model = tiny_models[family].model
    (name,) = cache_kwargs(model, None)
    assert name in inspect.signature(type(model).forward).parameters


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_reads_the_cache_without_deprecation_notices(family, tiny_models, fashion):
    lm = tiny_models[family]
    with no_deprecation_notices():
        (s,) = image_states(lm, [template(lm, "Does this image show an animal?")], [fashion[0][0]])
        t = text_states(lm, ["a shirt", "an ankle boot"])
    assert s["keys"].shape[0] == t["keys"].shape[1] == lm.text_config.num_hidden_layers


def test_continuing_from_the_cache_equals_one_forward_without_notices(tiny_models):
    lm = tiny_models["llava"]
    ids = lm.tokenizer(["a shirt, a coat and an ankle boot"], return_tensors="pt")["input_ids"]
    with torch.no_grad(), no_deprecation_notices():
        full = lm.model(input_ids=ids, use_cache=False).logits[:, -1]
        pre = lm.model(input_ids=ids[:, :-2], use_cache=True)
        out = lm.model(input_ids=ids[:, -2:], use_cache=True, **cache_kwargs(lm.model, output_cache(pre)))
    torch.testing.assert_close(out.logits[:, -1], full, atol=1e-5, rtol=1e-4)
    assert output_cache(out).get_seq_length() == ids.shape[1]
