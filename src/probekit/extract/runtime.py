"""What every extraction shares: the model in eval mode without gradients, inputs on the model's device, and
per-image processor outputs collated into one batch. Only :mod:`probekit.extract` runs a model."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..models import LoadedModel


@contextlib.contextmanager
def no_grad_eval(model):
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def to_device(lm: LoadedModel, inputs) -> dict[str, torch.Tensor]:
    inputs = {k: v.to(lm.device) for k, v in inputs.items()}
    if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
        inputs["pixel_values"] = inputs["pixel_values"].to(lm.dtype)
    return inputs


def collate(encs: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Concatenate per-image processor outputs along dim 0, zero-padding trailing dims to the largest
    (llava-next's patch axis, as its processor does; the model reads ``image_sizes`` to skip the padding)."""
    out = {}
    for k in encs[0]:
        ts = [e[k] for e in encs]
        shape = [max(t.shape[d] for t in ts) for d in range(1, ts[0].dim())]
        pads = [F.pad(t, [x for d in reversed(range(1, t.dim())) for x in (0, shape[d - 1] - t.shape[d])]) for t in ts]
        out[k] = torch.cat(pads)
    return out


