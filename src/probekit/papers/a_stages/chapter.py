"""Paper A's chapter glue (chapters 1-4; the notebooks hold narrative, parameters and calls into these functions).

* :func:`run` — a model x dataset x prompt variants, extracted once into a store (cached under ``cache_dir``: a
  second run with the same settings reads the store and loads no model) as a :class:`Run`;
* facts and samples for chapter 1 (:func:`model_facts`, :func:`prompts_html`, :func:`image_grid_html`);
* the analysis is in :mod:`.analysis`, the charts in :mod:`.charts`, what the chapters say in :mod:`.claims`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...book.context import ChapterRun, load, slug
from ...data import ImageDataset, get_dataset
from ...extract import READOUT, extract
from ...models import LoadedModel, identify
from ...prompts import Variant, load_variants
from ...store import ActivationStore, key_sha256
from .stages import Segmentation

DEFAULT_CACHE = Path(".cache") / "probekit"


@dataclass
class Run(ChapterRun):
    """One model x dataset x variant set, extracted: everything a chapter needs, read from the store (``lm`` is the
    live model only when this run had to extract; a re-run on a complete store loads none)."""

    model_id: str
    data: ImageDataset
    variants: list[Variant]
    store: ActivationStore
    seed: int
    n_per_class: int | None
    lm: LoadedModel | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return len(self.data)

    @property
    def blocks(self) -> int:
        """Decoder blocks L (the store holds L+1 states per prompt: 0 = embeddings)."""
        return self.store.n_layers - 1

    @property
    def data_label(self) -> str:
        per = f"{self.n_per_class} per class" if self.n_per_class else "all images"
        name = re.sub(r"\[[^\]]*\]", "", self.data.name)  # drop the subsample suffix [n_per_class=..,seed=..]
        return f"{name} ({per}, {len(self.data.classes)} classes)"

    def templated(self, variant: Variant) -> str:
        """``variant``'s prompt exactly as the model saw it (chat template applied, before image expansion)."""
        return self.store.key["prompts"][variant.name]

    def prompts(self) -> pd.DataFrame:
        """Every variant's prompt exactly as the model sees it (chat template applied, before image expansion)."""
        return pd.DataFrame([{"variant": v.name, "family": v.family, "answers": " / ".join(v.answers),
                              "expected": v.expected, "templated prompt": self.templated(v)} for v in self.variants])


def model_facts(run: Run) -> pd.DataFrame:
    """What the model is: class, decoder depth, width, dtype, where the weights came from (from the store)."""
    ident, extra = run.store.key["model"], run.store.extra
    facts = {
        "model": run.model_id,
        "class": ident["architecture"],
        "decoder blocks (L)": run.blocks,
        "stored states per prompt": f"{run.blocks + 1} (0 = embeddings, 1..L = blocks)",
        "hidden size": run.store.manifest["hidden_size"],
        "image tokens per image": extra.get("image_tokens", "?"),
        "dtype / device": f"{ident['dtype']} / {extra.get('device', '?')}",
        "weights sha256": (ident.get("weights_sha256") or "—")[:16] + ("..." if ident.get("weights_sha256") else ""),
    }
    return pd.DataFrame({"": list(facts), "value": [str(v) for v in facts.values()]}).set_index("")


def dataset_facts(run: Run) -> pd.DataFrame:
    counts = pd.Series(run.data.labels).value_counts().sort_index()
    return pd.DataFrame({"class": [run.data.classes[i] for i in counts.index], "images": counts.to_numpy()}).T \
        .rename(index={"class": "class", "images": f"images (n = {run.n_images}, seed {run.seed})"})


def prompts_html(run: Run) -> str:
    """Every variant's templated prompt in a <pre> block, the probed (last) token marked."""
    import html as h

    probed = run.store.extra.get("probed_tokens", {})
    parts = []
    for v in run.variants:
        t = run.templated(v)
        last = probed.get(v.name, "?")
        parts.append(
            f"<p><b>{h.escape(v.name)}</b> <small>({h.escape(v.family)}; answers {h.escape(' / '.join(v.answers))}, "
            f"expected <code>{h.escape(v.expected)}</code>; probed token: <code>{h.escape(repr(last))}</code>)</small></p>"
            f"<pre style='white-space:pre-wrap'>{h.escape(t)}</pre>")
    return "\n".join(parts)


def store_dir(cache_dir, identity: dict, data: ImageDataset, variants, position: str = "last") -> Path:
    """The cache directory of one extraction: ``cache_dir/<model slug>/<hash of what changes the numbers>``
    (``identity``: :meth:`LoadedModel.identity`, or :func:`probekit.models.identify` without loading the model)."""
    key = {"model": identity, "data": data.identity(), "variants": [v.to_dict() for v in variants],
           "position": position, "readout": READOUT}
    return Path(cache_dir) / slug(identity["model_id"]) / key_sha256(key, 16)


def complete_store(path: Path, identity: dict) -> ActivationStore | None:
    """The store at ``path`` when it is complete and was written for these weights, else None."""
    store = ActivationStore.open_complete(path)
    return store if store is not None and store.key.get("model") == identity else None


def variant_spec(variants) -> dict | str:
    """``variants`` parameter -> a spec for :func:`load_variants` ('paper-a', a YAML path, or a dict)."""
    if variants is None:
        return "paper-a"
    return variants


def run(model_id: str, dataset: str = "fashion-mnist", data_root: str | None = None, n_per_class: int | None = 50,
        variants="paper-a", device: str = "cpu", dtype: str = "float32", cache_dir=DEFAULT_CACHE, seed: int = 0,
        *, lm: LoadedModel | None = None, data: ImageDataset | None = None, batch_size: int = 8,
        batch_variants: bool = True, progress: bool = False, families=None) -> Run:
    """Extract (cached) and return a :class:`Run`. The store is found from the model's identity
    (:func:`probekit.models.identify`: config and weight files, no model built); the model is loaded only when that
    store is missing or incomplete. Extraction runs every variant's suffix of ``batch_size`` images in one pass
    (``batch_variants``: the same numbers up to float rounding; 1.6x faster on this book's 2-core CPU for smol-llava,
    whose many small passes otherwise leave the cores idle)."""
    data = data if data is not None else get_dataset(dataset, data_root, n_per_class=n_per_class, seed=seed)
    if isinstance(variants, (list, tuple)) and variants and all(isinstance(v, Variant) for v in variants):
        vs = list(variants)
    else:
        if isinstance(variants, (list, tuple)):  # a list of paper A's families to keep
            variants, families = "paper-a", list(variants)
        vs = load_variants(variant_spec(variants), concept=data.concept, negation=data.negation, families=families)
    ident = lm.identity() if lm is not None else identify(model_id, dtype=dtype, device=device)
    out = store_dir(cache_dir, ident, data, vs)
    store = complete_store(out, ident)
    if store is None:
        lm = lm or load(model_id, device, dtype)
        store = extract(lm, data, vs, out, batch_size=batch_size, batch_variants=batch_variants, progress=progress)
    return Run(model_id=str(model_id), data=data, variants=vs, store=store, seed=seed, n_per_class=n_per_class, lm=lm)


def book_runs(model_ids, *, dataset: str = "fashion-mnist", data_root: str | None = None,
              contrast_dataset: str = "digits", n_per_class: int | None = 100, variants="paper-a", device: str = "cpu",
              dtype: str = "float32", cache_dir=DEFAULT_CACHE, seed: int = 0) -> dict[str, Run]:
    """Chapters 1-4's runs of several models on one two-domain dataset and the book's prompts
    (:func:`probekit.prompts.book_prompts`): what chapter 4 calls, and what ``probekit book`` calls ahead of it to
    extract chapter 4's stores while chapter 1 runs (the same call, so the same stores)."""
    from ...book.context import model_list
    from ...data import two_domain_dataset
    from ...prompts import book_prompts

    data = two_domain_dataset(dataset, data_root, n_per_class, seed, contrast=contrast_dataset)
    prompts = book_prompts(data.concept, data.negation, variants)
    return {m: run(m, data=data, variants=prompts, n_per_class=n_per_class, device=device, dtype=dtype,
                   cache_dir=cache_dir, seed=seed) for m in model_list(model_ids)}


def sample_grid(data: ImageDataset, per_class: int = 4, seed: int = 0) -> pd.DataFrame:
    """A few images per class as rows (class, index, PIL image) for display."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, name in enumerate(data.classes):
        idx = np.flatnonzero(data.labels == c)
        for i in rng.choice(idx, min(per_class, len(idx)), replace=False) if len(idx) else []:
            rows.append({"class": name, "index": int(i), "image": data[int(i)][0]})
    return pd.DataFrame(rows)


def image_grid_html(data: ImageDataset, per_class: int = 4, seed: int = 0, size: int = 56) -> str:
    """Sample images per class as an HTML table with inline PNGs (renders in the book without a kernel)."""
    import html

    from ...book.plots import img_tag

    grid = sample_grid(data, per_class, seed)
    rows = []
    for name, g in grid.groupby("class", sort=False):
        cells = [img_tag(im, size, alt=name) for im in g.image]
        rows.append(f"<tr><th style='text-align:right;padding-right:8px'>{html.escape(name)}</th>"
                    f"<td>{''.join(cells)}</td></tr>")
    return "<table class='probekit-samples'>" + "".join(rows) + "</table>"


def stage_table(seg: Segmentation) -> pd.DataFrame:
    """The boundary table shown in the book: stage, first and last layer, number of layers."""
    return seg.boundaries()


def model_table(runs: dict[str, Run]) -> pd.DataFrame:
    """One row per model (the index): class, decoder blocks, hidden size, images."""
    return pd.DataFrame([{"model": m, "class": r.store.key["model"]["architecture"], "decoder blocks": r.blocks,
                          "hidden size": r.store.manifest["hidden_size"], "images": r.n_images}
                         for m, r in runs.items()]).set_index("model")


