"""Names that moved inside the supported transformers range (``pyproject.toml``: 5.x).

transformers 5.24 renamed the key/value cache argument of every model's ``forward`` from ``past_key_values`` to
``cache`` (the old name warns until 5.40) and the output field the same way. probekit asks the model which name
its ``forward`` takes, so the same code runs without warnings on either side of the rename.
"""

from __future__ import annotations

import inspect
from functools import lru_cache


@lru_cache(maxsize=None)
def _cache_arg(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters  # follows functools.wraps of transformers' decorators
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model, cache) -> dict:
    """``{name: cache}`` for ``model(**inputs, **cache_kwargs(model, cache))``, under the name ``model`` takes."""
    return {_cache_arg(type(model)): cache}


def output_cache(out):
    """The key/value cache of a model output (``out.cache`` from 5.24, ``out.past_key_values`` before)."""
    # by the output's declared fields, not by value: on 5.24 a ``cache`` of None must not fall back to the
    # deprecated ``past_key_values`` property (it warns, then returns the same None)
    if "cache" in getattr(out, "__dataclass_fields__", ()):
        return out.cache
    return out.past_key_values
