"""What every extraction shares: the model in eval mode without gradients, inputs on the model's device, and
per-image processor outputs collated into one batch. Only :mod:`probekit.extract` runs a model."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import DataError
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


def pixels_sha256(images: Sequence) -> str:
    """sha256 over the pixels of ``images`` (PIL images as RGB, as the processor receives them; arrays as given) and
    their shapes: what a store's key holds of its images, so that it can be checked without the model."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for im in images:
        a = np.ascontiguousarray(np.asarray(im.convert("RGB") if hasattr(im, "convert") else im))
        h.update(str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def image_items(n: int, labels=None, classes=None, ids=None) -> tuple[list[int], list[str], list[str]]:
    """Labels, class names and item ids for ``n`` images given as lists (defaults: one class "image", ids 0..n-1);
    one DataError when their lengths disagree."""
    labels = [0] * n if labels is None else [int(y) for y in labels]
    classes = list(classes) if classes is not None else ["image"]
    ids = [str(i) for i in range(n)] if ids is None else [str(i) for i in ids]
    if len(labels) != n or len(ids) != n:
        raise DataError(f"{n} images but {len(labels)} labels and {len(ids)} ids; give one of each per image")
    return labels, classes, ids
