"""Paper C's charts: the LRS heatmap with the group cuts, the task probes per vision layer with the groups and the
fusion, and sample images of every task.

Every chart is finished with a short title and the caption naming model, data, n and seed
(:func:`probekit.book.plots.finish`); they read a :class:`~.analysis.VisionRun` and the probe results of
:func:`~.analysis.probe_tasks`, never a model."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from ...book.plots import finish, img_tag
from .analysis import VisionRun, group_names
from .tasks import TASK_TITLES

GROUP_COLORS = {"embeddings": "#bbbbbb", "shallow": "#4c78a8", "middle": "#54a24b", "deep": "#b279a2"}


def _group_bands(vr: VisionRun) -> pd.DataFrame:
    rows = [{"group": "embeddings", "start": -0.5, "end": 0.5, "first_layer": 0, "last_layer": 0}]
    for name, g in zip(group_names(len(vr.groups)), vr.groups):
        rows.append({"group": name, "start": g[0] - 0.5, "end": g[-1] + 0.5, "first_layer": g[0], "last_layer": g[-1]})
    return pd.DataFrame(rows)


def _group_scale():
    return alt.Scale(domain=list(GROUP_COLORS), range=list(GROUP_COLORS.values()))


def lrs_chart(vr: VisionRun, *, cap: str | None = None, title: str = "Layer-wise representation similarity (LRS)"):
    """Heatmap of LRS between every pair of vision layers (0 = patch embeddings), the group cuts as lines."""
    S = vr.lrs
    L = S.shape[0]
    d = pd.DataFrame([{"layer i": i, "layer j": j, "x": j - 0.5, "x2": j + 0.5, "y": i - 0.5, "y2": i + 0.5,
                       "LRS": float(S[i, j])} for i in range(L) for j in range(L)])
    cap = cap or vr.caption(extra="LRS averaged over patch tokens and all task images; lines: group cuts")
    ax = dict(scale=alt.Scale(domain=[-0.5, L - 0.5], nice=False, zero=False))
    heat = alt.Chart(d).mark_rect().encode(
        x=alt.X("x:Q", title="vision layer j", axis=alt.Axis(values=list(range(L)), tickMinStep=1), **ax), x2="x2:Q",
        y=alt.Y("y:Q", title="vision layer i", axis=alt.Axis(values=list(range(L)), tickMinStep=1),
                scale=alt.Scale(domain=[L - 0.5, -0.5], nice=False, zero=False)), y2="y2:Q",
        color=alt.Color("LRS:Q", scale=alt.Scale(scheme="viridis"), title="mean cos"),
        tooltip=["layer i:Q", "layer j:Q", alt.Tooltip("LRS:Q", format=".3f")])
    layers = [heat]
    if L <= 16:
        layers.append(alt.Chart(d).mark_text(fontSize=9).encode(
            x=alt.X("layer j:Q"), y=alt.Y("layer i:Q"), text=alt.Text("LRS:Q", format=".2f"),
            color=alt.condition(f"datum.LRS > {(float(S.min()) + float(S.max())) / 2:.6f}", alt.value("black"),
                                alt.value("white"))))
    cuts = pd.DataFrame([{"at": g[0] - 0.5, "label": f"{n} starts at layer {g[0]}"}
                         for n, g in zip(group_names(len(vr.groups)), vr.groups)])
    layers.append(alt.Chart(cuts).mark_rule(color="#ff4136", strokeWidth=2).encode(x="at:Q", tooltip=["label:N"]))
    layers.append(alt.Chart(cuts).mark_rule(color="#ff4136", strokeWidth=2).encode(y="at:Q", tooltip=["label:N"]))
    side = min(380, 40 * L + 60)
    chart = alt.layer(*layers).properties(width=side, height=side)
    return finish(chart, title, cap)


def task_chart(vr: VisionRun, results: pd.DataFrame, *, cap: str | None = None, columns: int = 2,
               title: str = "Task-probe accuracy by vision layer, with the groups and the fusion"):
    """Per task: held-out accuracy of the per-layer probes (line, 95 % CI band), the fusion probe (dashed
    line, its CI as a horizontal band), chance (dotted), the model's default layer (grey rule), the groups
    as background bands."""
    bands = _group_bands(vr)
    L = vr.n_layers
    xs = alt.Scale(domain=[-0.5, L + 0.5], nice=False, zero=False)
    charts = []
    for t, g in results.groupby("task", sort=False):
        lay = g[g.kind == "layer"].copy()
        fus = g[g.kind == "fusion"].copy().assign(x0=-0.5, x1=L + 0.5, label=lambda d: "fusion " + d.layers)
        base = alt.Chart(lay).encode(x=alt.X("layer:Q", scale=xs, title="vision layer (0 = patch embeddings)",
                                             axis=alt.Axis(values=list(range(L + 1)))))
        tooltip = ["layer:Q", "group:N", alt.Tooltip("accuracy:Q", format=".3f"),
                   alt.Tooltip("ci_low:Q", format=".3f", title="CI low"),
                   alt.Tooltip("ci_high:Q", format=".3f", title="CI high"), alt.Tooltip("n_test:Q", title="n test")]
        parts = [
            alt.Chart(bands).mark_rect(opacity=0.2).encode(
                x=alt.X("start:Q", scale=xs), x2="end:Q",
                color=alt.Color("group:N", scale=_group_scale(), title="layer group", legend=alt.Legend(orient="bottom")),
                tooltip=["group:N", alt.Tooltip("first_layer:Q", title="first layer"),
                         alt.Tooltip("last_layer:Q", title="last layer")]),
            alt.Chart(fus).mark_rect(opacity=0.15, color="#f58518").encode(x="x0:Q", x2="x1:Q", y="ci_low:Q",
                                                                        y2="ci_high:Q"),
            alt.Chart(fus).mark_rule(color="#f58518", strokeDash=[6, 3], strokeWidth=2).encode(
                y="accuracy:Q", tooltip=["label:N", alt.Tooltip("accuracy:Q", format=".3f"),
                                         alt.Tooltip("ci_low:Q", format=".3f", title="CI low"),
                                         alt.Tooltip("ci_high:Q", format=".3f", title="CI high")]),
            base.mark_area(opacity=0.25, color="#333").encode(
                y=alt.Y("ci_low:Q", scale=alt.Scale(domain=[0, 1]), title="held-out probe accuracy"), y2="ci_high:Q"),
            base.mark_line(point=True, color="#222").encode(y="accuracy:Q", tooltip=tooltip),
            alt.Chart(pd.DataFrame({"chance": [float(g.chance.iloc[0])]})).mark_rule(
                strokeDash=[1, 3], color="#777").encode(y="chance:Q", tooltip=[alt.Tooltip("chance:Q", format=".3f")]),
            alt.Chart(pd.DataFrame({"layer": [vr.default_layer],
                                    "label": [f"the model's default layer ({vr.default_layer})"]})).mark_rule(
                color="#888", strokeWidth=1.5).encode(x=alt.X("layer:Q", scale=xs), tooltip=["label:N"]),
        ]
        charts.append(alt.layer(*parts).properties(width=230, height=170, title=TASK_TITLES[t]))
    chart = alt.concat(*charts, columns=columns).resolve_scale(color="shared")
    cap = cap or vr.caption(extra=f"{int(results.n_test.iloc[0])}+ held-out images per task; 95 % bootstrap CIs; "
                                  f"dashed orange: fusion of layers {'+'.join(map(str, vr.fusion))}")
    return finish(chart, title, cap)


def samples_html(vr: VisionRun, per_class: int = 3, size: int = 48) -> str:
    """A few images per class of every task, as an HTML table with inline PNGs."""
    import html as h

    from PIL import Image

    rng = np.random.default_rng(vr.seed)
    rows = []
    for t, task in vr.tasks.items():
        cells = []
        for c, name in enumerate(task.classes):
            idx = np.flatnonzero(task.labels == c)
            imgs = []
            for i in rng.choice(idx, min(per_class, len(idx)), replace=False):
                imgs.append(img_tag(Image.fromarray(task.images[i]), size, alt=name))
            cells.append(f"<div style='display:inline-block;margin:0 8px 4px 0;text-align:center'>{''.join(imgs)}"
                         f"<br><small>{h.escape(name)}</small></div>")
        rows.append(f"<tr><th style='text-align:right;vertical-align:top;padding-right:8px'>{h.escape(TASK_TITLES[t])}"
                    f"<br><small>{len(task)} images</small></th><td>{''.join(cells)}</td></tr>")
    return "<table class='probekit-samples'>" + "".join(rows) + "</table>"


__all__ = ["GROUP_COLORS", "lrs_chart", "samples_html", "task_chart"]
