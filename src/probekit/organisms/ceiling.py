"""What an organism's frozen vision tower lets a linear readout name: the measured ceiling beside its naming.

An organism names a Fashion-MNIST image through its vision tower (frozen after phase 1), the projector and the
decoder. :func:`vision_readout` asks how much of the class the tower's features carry: a multinomial logistic
regression (:class:`probekit.probes.LayerProbes`, standardised features, ``C = 1``) on the features the projector
reads (the tower's state at the projector's layer, every image token, flattened), fitted on the Fashion-MNIST
**train** split (the images the tower was trained on) and scored once on the **test** half. No setting is chosen
on the test half; the readout's accuracy is what a linear map of those features achieves, so a naming accuracy far
below it points at the projector and decoder, one near it at the tower. It is not a strict upper bound: the
projector and decoder are not linear.
"""

from __future__ import annotations

import numpy as np

from ..stats import wilson_interval

READOUT_C = 1.0


def tower_features(lm, images, *, batch: int = 256) -> tuple[np.ndarray, int]:
    """``[n, T * d]`` float32: each image's vision-tower state at the layer the projector reads (every image token,
    flattened), and that layer's number."""
    from ..extract.vision import default_vision_layer, vision_states

    out, layer = [], None
    for h in vision_states(lm, images, batch_size=batch):
        if layer is None:
            layer = default_vision_layer(lm, h.shape[0] - 1)
        out.append(h[layer].reshape(-1).numpy())
    return np.stack(out).astype(np.float32), int(layer)


def vision_readout(model_id: str, *, train_limit: int | None = None, test_limit: int | None = None, seed: int = 0,
                   log=print) -> dict:
    """The linear readout of ``model_id``'s vision tower on Fashion-MNIST's ten classes: fitted on the train split
    (``train_limit``: a seeded subset), scored on the whole test half (``test_limit``: a seeded subset, for tests).
    Returns the accuracy with its Wilson 95 % interval, n, the layer and the feature count."""
    from PIL import Image

    from ..models import load_model
    from ..probes import LayerProbes
    from .tasks import image_pools

    lm = load_model(model_id, dtype="float32", device="cpu")
    train, test = image_pools("train")["fashion"], image_pools("test")["fashion"]
    keep, held = np.arange(len(train)), np.arange(len(test))
    if train_limit is not None and train_limit < len(keep):
        keep = np.sort(np.random.default_rng(seed).permutation(len(keep))[:train_limit])
    if test_limit is not None and test_limit < len(held):
        held = np.sort(np.random.default_rng(seed + 1).permutation(len(held))[:test_limit])

    def pils(pool, idx):
        return [Image.fromarray(pool.images[i]).convert("RGB") for i in idx]

    log(f"[readout] {model_id}: tower features of {len(keep):,} train and {len(held):,} test-half images")
    x_train, layer = tower_features(lm, pils(train, keep))
    x_test, _ = tower_features(lm, pils(test, held))
    probe = LayerProbes(C=READOUT_C, seed=seed).fit(x_train[:, None], train.labels[keep])
    correct = probe.predict(x_test[:, None])[:, 0] == test.labels[held]
    k, n = int(correct.sum()), len(correct)
    low, high = wilson_interval(k, n)
    log(f"[readout] {model_id}: layer {layer}, {x_train.shape[1]} features, test-half accuracy {k / n:.4f}")
    return {"accuracy": round(k / n, 4), "ci95": [round(low, 4), round(high, 4)], "n_test": n,
            "n_train": len(keep), "layer": layer, "features": int(x_train.shape[1]), "C": READOUT_C,
            "fit": "probekit.probes.LayerProbes (multinomial logistic regression, standardised)",
            "train": "Fashion-MNIST train split",
            "test": "Fashion-MNIST test half" + ("" if test_limit is None else f" (seeded subset of {n})")}
