"""An ipywidgets explorer of the frozen probes: choose the variant family, the layer and a class; see the
per-class accuracy and the probe's confusion matrix.

In a live kernel, ``Explorer(...).widget()`` is the interactive explorer (Python callbacks). A static book
runs no Python, so :meth:`Explorer.static` gives the same view as an altair chart whose dropdown and slider
work in the browser without a kernel (all (family, layer) confusion matrices are precomputed), plus
:meth:`Explorer.table_html` for one readable table.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

from ..probes import LayerProbes, split_items


def confusion_table(store, probes: LayerProbes, *, test_size: float = 0.3, seed: int = 0, test_items=None,
                    variants=None) -> pd.DataFrame:
    """Counts of (true, predicted) class per (variant family, layer) on the held-out images.

    The anchor-trained probes (``probe_store(...).attrs["probes"]``) are scored on every variant (or on
    ``variants``); a family pools its variants. ``test_items``: the held-out store positions the probes were scored
    on (``probe_store(...).attrs["test_items"]``; default: the split :func:`probe_store` makes of every image).
    Columns: family, layer, true, pred, count, correct_count.
    """
    y = store.labels
    te = np.asarray(test_items) if test_items is not None else split_items(y, test_size=test_size, seed=seed)[1]
    classes = np.asarray(store.classes)
    keep = [v for v in store.variants if variants is None or v.name in variants]
    rows = []
    for fam in dict.fromkeys(v.family for v in keep):
        preds, trues = [], []
        for v in keep:
            if v.family == fam:
                preds.append(probes.predict(store.features(v.name)[te]))  # [n, L]
                trues.append(y[te])
        P, T = np.concatenate(preds), np.concatenate(trues)
        for layer in range(P.shape[1]):
            pairs, counts = np.unique(np.stack([T, P[:, layer]], 1), axis=0, return_counts=True)
            for (t, p), c in zip(pairs, counts):
                rows.append({"family": fam, "layer": layer, "true": classes[t], "pred": classes[p],
                             "count": int(c), "correct_count": int(c) if t == p else 0})
    return pd.DataFrame(rows)


class Explorer:
    """Per-class accuracy and confusion matrix of the frozen probes by variant family and layer."""

    def __init__(self, store, probes: LayerProbes, *, test_size: float = 0.3, seed: int = 0, cap: str = "",
                 test_items=None, variants=None):
        self.store = store
        self.table = confusion_table(store, probes, test_size=test_size, seed=seed, test_items=test_items,
                                     variants=variants)
        present = set(self.table.true)
        self.classes = [c for c in store.classes if c in present]
        self.families = list(dict.fromkeys(self.table.family))
        self.layers = sorted(self.table.layer.unique().tolist())
        self.cap = cap

    # ---- data -------------------------------------------------------------------------------------
    def confusion(self, family: str, layer: int) -> pd.DataFrame:
        """Confusion matrix (rows: true class, columns: predicted class) of one family at one layer."""
        t = self.table[(self.table.family == family) & (self.table.layer == layer)]
        m = t.pivot_table(index="true", columns="pred", values="count", aggfunc="sum", fill_value=0)
        return m.reindex(index=self.classes, columns=self.classes, fill_value=0).astype(int)

    def per_class(self, family: str, layer: int) -> pd.DataFrame:
        m = self.confusion(family, layer)
        n = m.sum(axis=1)
        acc = pd.Series(np.diag(m.to_numpy()), index=m.index) / n.replace(0, np.nan)
        return pd.DataFrame({"class": m.index, "accuracy": acc.round(3).to_numpy(), "n": n.to_numpy()})

    def best_layer(self, family: str = "anchor") -> int:
        t = self.table[self.table.family == family].groupby("layer")[["correct_count", "count"]].sum()
        return int((t.correct_count / t["count"]).idxmax())

    # ---- views ------------------------------------------------------------------------------------
    def table_html(self, family: str, layer: int, cls: str | None = None) -> str:
        """Per-class accuracy and the confusion matrix as one HTML block (the chosen class highlighted)."""
        pc = self.per_class(family, layer)
        m = self.confusion(family, layer)
        total = int(m.to_numpy().sum())
        acc = float(np.trace(m.to_numpy())) / max(total, 1)
        esc = html.escape
        hl = lambda c: ' style="background:#fff3c4"' if cls is not None and c == cls else ""  # noqa: E731
        vertical = "writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap;padding:2px"
        head = "".join(f"<th style='{vertical}'>{esc(c)}</th>" for c in self.classes)  # whole names, upright columns
        body = "".join(
            f"<tr{hl(t)}><th style='text-align:right'>{esc(t)}</th>"
            + "".join(f"<td style='text-align:right;{'font-weight:bold' if t == p else ''}'>{m.loc[t, p]}</td>"
                      for p in self.classes)
            + f"<td style='text-align:right'>{pc.set_index('class').loc[t, 'accuracy']:.3f}</td></tr>"
            for t in self.classes)
        return (f"<div class='probekit-explorer'><p><b>family</b> {esc(family)} · <b>layer</b> {layer} · "
                f"accuracy {acc:.3f} on {total} held-out prompts</p>"
                f"<table><tr><th>true \\ predicted</th>{head}<th>class accuracy</th></tr>{body}</table>"
                + (f"<p><small>{esc(self.cap)}</small></p>" if self.cap else "") + "</div>")

    def static(self, family: str = "anchor", layer: int | None = None):
        """The explorer as an altair chart (dropdown: family; slider: layer; click a class)."""
        from ..papers.a_stages.charts import explorer_chart

        layer = self.best_layer(family) if layer is None else layer
        return explorer_chart(self.table, cap=self.cap, layers=self.layers, families=self.families,
                              classes=self.classes, layer=layer, family=family)

    def widget(self):
        """The live explorer (needs a kernel): dropdowns for family and class, a slider for the layer."""
        import ipywidgets as w

        fam = w.Dropdown(options=self.families, value=self.families[0], description="family")
        layer = w.IntSlider(value=self.best_layer(self.families[0]), min=self.layers[0], max=self.layers[-1],
                            description="layer", continuous_update=False)
        cls = w.Dropdown(options=["(none)"] + self.classes, value="(none)", description="class")
        out = w.HTML()

        def update(*_):
            c = None if cls.value == "(none)" else cls.value
            out.value = self.table_html(fam.value, layer.value, c)

        for ctl in (fam, layer, cls):
            ctl.observe(update, names="value")
        update()
        return w.VBox([w.HBox([fam, layer, cls]), out])


__all__ = ["Explorer", "confusion_table"]
