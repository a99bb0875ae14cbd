"""Paper B's charts (altair, finished with :func:`probekit.book.plots.finish`: title and the run's caption) and the
ground-truth figure: per-layer perception (:func:`perception_chart`), the three conditions
(:func:`conditions_chart`), the cross-image key variance (:func:`variance_chart`), and one image per class with
its token mask and transformed views (:func:`masks_html`). They draw what :mod:`.analysis` measured.
"""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from ...book.plots import finish, img_tag
from . import readouts as vt
from .analysis import BASELINES, KINDS, TASKS, Perception, TokensRun
from .claims import block_text

COLORS = {"values": "#4c78a8", "keys": "#f58518", "hidden": "#54a24b", "vision encoder": "#e45756",
          "projector": "#9d755d", "values, other classes' queries": "#9ecae9"}
CONDITION_COLORS = {"plain": "#4c78a8", "prefix": "#54a24b", "blocked": "#b279a2"}


def _panel_title(task: str) -> str:
    return f"{task}: {TASKS[task][0]}"


def _kind_scale():
    return alt.Scale(domain=list(COLORS), range=list(COLORS.values()))


def perception_chart(tr: TokensRun, res: Perception, *, condition: str = "plain", cap: str | None = None,
                     title: str = "Zero-shot perception from the image tokens, per LM layer"):
    """One panel per task (its main metric): per-layer lines for values, keys and hidden states (95 % CI bands),
    the vision encoder and the projector as horizontal rules, chance dotted; the text-query panel adds the
    values scored with the other classes' queries (control)."""
    t = res.table
    xs = alt.Scale(domain=[min(tr.layers) - 0.5, max(tr.layers) + 0.5], nice=False, zero=False)
    charts = []
    for task, (metric, _) in TASKS.items():
        g = t[(t.condition == condition) & (t.task == task)]
        lines = g[(g.metric == metric) & g.kind.isin(KINDS)].copy()
        if task == "text query":
            ctrl = g[(g.metric == TASKS[task][1][0]) & (g.kind == "values")].copy()
            lines = pd.concat([lines, ctrl.assign(kind="values, other classes' queries")])
        base = g[(g.metric == metric) & g.kind.isin(BASELINES)].copy()
        col = alt.Color("kind:N", scale=_kind_scale(), title="feature", legend=alt.Legend(orient="bottom", columns=3, symbolOpacity=1))
        tooltip = ["kind:N", "layer:Q", alt.Tooltip("score:Q", format=".3f"),
                   alt.Tooltip("ci_low:Q", format=".3f", title="CI low"), alt.Tooltip("ci_high:Q", format=".3f",
                                                                                    title="CI high"), "n:Q"]
        enc = alt.Chart(lines).encode(x=alt.X("layer:Q", scale=xs, title="LM layer (decoder block)",
                                              axis=alt.Axis(values=list(tr.layers))))
        parts = [
            enc.mark_area(opacity=0.15).encode(y=alt.Y("ci_low:Q", title=metric), y2="ci_high:Q", color=col),
            enc.mark_line(point=True).encode(y="score:Q", color=col, tooltip=tooltip),
            alt.Chart(base).mark_rule(strokeWidth=2, strokeDash=[6, 3]).encode(
                y="score:Q", color=col,
                tooltip=["kind:N", alt.Tooltip("score:Q", format=".3f"), alt.Tooltip("ci_low:Q", format=".3f"),
                         alt.Tooltip("ci_high:Q", format=".3f")]),
        ]
        chance = g[g.metric == metric].chance.dropna()
        if len(chance):
            parts.append(alt.Chart(pd.DataFrame({"chance": [float(chance.iloc[0])]})).mark_rule(
                strokeDash=[1, 3], color="#777").encode(y="chance:Q", tooltip=[alt.Tooltip("chance:Q", format=".3f")]))
        charts.append(alt.layer(*parts).properties(width=250, height=170, title=_panel_title(task)))
    chart = alt.concat(*charts, columns=2).resolve_scale(color="shared")
    cap = cap or tr.caption(extra=f"condition: {condition}; segmentation {res.shots}-shot x {res.episodes} episodes on "
                                  f"{res.n_test} held-out images; 95 % bootstrap CIs over images; dashed rules: the "
                                  "vision encoder's output and the projector's at the same tokens; dotted: chance; no "
                                  "text query for the vision encoder (it has no text side)")
    return finish(chart, title, cap)


def conditions_chart(tr: TokensRun, res: Perception, *, cap: str | None = None,
                     title: str = "Image values under a text prefix and with attention blocked"):
    """Values per layer under each condition (plain, prefix, blocked), one panel per task; the vision encoder
    and the projector (which no condition changes) as grey rules."""
    t = res.table
    xs = alt.Scale(domain=[min(tr.layers) - 0.5, max(tr.layers) + 0.5], nice=False, zero=False)
    cs = alt.Scale(domain=list(tr.conditions), range=[CONDITION_COLORS[c] for c in tr.conditions])
    charts = []
    for task, (metric, _) in TASKS.items():
        g = t[(t.task == task) & (t.metric == metric)]
        lines = g[g.kind == "values"]
        base = g[g.kind.isin(BASELINES)].assign(label=lambda d: d.kind + " (every condition)")
        enc = alt.Chart(lines).encode(x=alt.X("layer:Q", scale=xs, title="LM layer (decoder block)",
                                              axis=alt.Axis(values=list(tr.layers))))
        col = alt.Color("condition:N", scale=cs, title="condition", legend=alt.Legend(orient="bottom", symbolOpacity=1))
        parts = [
            enc.mark_area(opacity=0.12).encode(y=alt.Y("ci_low:Q", title=f"{metric} (values)"), y2="ci_high:Q",
                                               color=col),
            enc.mark_line(point=True).encode(
                y="score:Q", color=col,
                tooltip=["condition:N", "layer:Q", alt.Tooltip("score:Q", format=".3f"),
                         alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f")]),
            alt.Chart(base).mark_rule(color="#888").encode(
                y="score:Q", strokeDash=alt.StrokeDash("kind:N", title="baseline",
                                                       scale=alt.Scale(domain=list(BASELINES), range=[[1, 0], [6, 3]]),
                                                       legend=alt.Legend(orient="bottom")),
                tooltip=["label:N", alt.Tooltip("score:Q", format=".3f")]),
        ]
        charts.append(alt.layer(*parts).properties(width=250, height=170, title=_panel_title(task)))
    chart = alt.concat(*charts, columns=2).resolve_scale(color="shared")
    blocked = block_text(tr)
    cap = cap or tr.caption(extra=f"prefix: {tr.prefix!r}; blocked: {blocked}; 95 % bootstrap CIs over images; grey "
                                  "rules: vision encoder (solid) and projector (dashed)")
    return finish(chart, title, cap)


def variance_chart(tr: TokensRun, *, cap: str | None = None,
                   title: str = "How much each image key varies across images (per layer, per token position)"):
    """Small multiples, one per LM layer: the normalized cross-image variance of the key at each token of the
    grid; flagged input-agnostic keys marked ●, stand-ins ○; late layers labelled."""
    rows, cols = tr.grid
    late = set(tr.late)
    d = []
    for t, c in enumerate(tr.cells):  # the LM's input (projector output) at each token, for reference
        if c >= 0:
            d.append({"layer": "input (projector)", "order": 0, "row": int(c // cols), "col": int(c % cols),
                      "token": t, "ratio": float(tr.input_variance[t]), "mark": ""})
    for i, l in enumerate(tr.layers):
        for t, c in enumerate(tr.cells):
            if c < 0:
                continue
            mark = "●" if t in tr.agnostic.get(l, []) else ("○" if t in tr.block.get(l, []) else "")
            d.append({"layer": f"{l}{' (late)' if l in late else ''}", "order": l, "row": int(c // cols),
                      "col": int(c % cols), "token": t, "ratio": float(tr.variance[i, t]), "mark": mark})
    d = pd.DataFrame(d)
    sort = list(dict.fromkeys(d.sort_values("order").layer))
    base = alt.Chart(d).encode(x=alt.X("col:O", title=None, axis=None), y=alt.Y("row:O", title=None, axis=None))
    heat = base.mark_rect().encode(
        color=alt.Color("ratio:Q", scale=alt.Scale(scheme="viridis", domain=[0, max(1.0, float(d.ratio.max()))]),
                        title="variance across images / layer total"),
        tooltip=["layer:N", "token:Q", "row:Q", "col:Q", alt.Tooltip("ratio:Q", format=".3f")])
    text = base.mark_text(color="white", fontSize=14).encode(text="mark:N")
    side = 18 * max(rows, cols)
    chart = alt.layer(heat, text).properties(width=side * cols / max(rows, cols), height=side * rows / max(rows, cols)) \
        .facet(facet=alt.Facet("layer:N", sort=sort, title="LM layer"), columns=min(len(tr.layers) + 1, 9))
    cap = cap or tr.caption(extra=f"keys of the plain condition, original images (first panel: the same ratio for "
                                  f"the projector output, the LM's input); ● input-agnostic (ratio < {tr.threshold} in "
                                  f"a late layer, > {tr.late_from:g} of depth); ○ blocked stand-ins")
    return finish(chart, title, cap)


def masks_html(tr: TokensRun, size: int = 84) -> str:
    """One image per class beside its token mask (foreground tokens tinted) and its two transformed views."""
    import html as h

    from PIL import Image, ImageDraw

    rows, cols = tr.grid
    cells = []
    for c, name in enumerate(tr.task.classes):
        i = int(np.flatnonzero(tr.task.labels == c)[0])
        big = Image.fromarray(tr.task.images[i]).convert("RGB").resize((size, size), Image.Resampling.NEAREST)
        over = big.copy()
        draw = ImageDraw.Draw(over, "RGBA")
        ey, ex = vt.cell_edges(size, rows), vt.cell_edges(size, cols)
        for k, fg in enumerate(tr.masks[i]):
            r, cc = divmod(k, cols)
            box = (ex[cc], ey[r], ex[cc + 1] - 1, ey[r + 1] - 1)
            draw.rectangle(box, fill=(228, 87, 86, 110) if fg else None, outline=(120, 120, 120, 255))
        views = "".join(img_tag(Image.fromarray(tr.views[v][i]).convert("RGB"), size // 2, alt=v) for v in ("flip", "shift"))
        cells.append(f"<div style='display:inline-block;margin:0 10px 8px 0;text-align:center'>"
                     f"{img_tag(big, size, alt=name)}{img_tag(over, size, alt=name + ' mask')}<br>{views}"
                     f"<br><small>{h.escape(name)}: {int(tr.masks[i].sum())}/{len(tr.masks[i])} foreground</small></div>")
    return "<div class='probekit-samples'>" + "".join(cells) + "</div>"


__all__ = ["COLORS", "CONDITION_COLORS", "conditions_chart", "masks_html", "perception_chart", "variance_chart"]
