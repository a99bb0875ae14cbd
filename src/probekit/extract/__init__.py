"""The only code that runs a model. Everything else reads what it writes into stores.

- :mod:`.hidden` (paper A): per-layer hidden states at the probed position of images x prompt variants, with
  the model's answers read as token sequences (:func:`extract`);
- :mod:`.kv` (paper B): the LM's image key / value tokens, hidden states and text queries;
- :mod:`.vision` (paper C): the vision tower's per-layer states;
- :mod:`.runtime`: what they share (eval mode without gradients, inputs on the model's device, collation).
"""

from .hidden import (
    READOUT,
    SharedPrefix,
    answer_plan,
    extract,
    forward_batch,
    forward_shared,
    shared_prefix,
)

__all__ = ["READOUT", "SharedPrefix", "answer_plan", "extract", "forward_batch", "forward_shared", "shared_prefix"]
