"""Paper A's charts: per-layer accuracy with CI bands, the shuffled control, stage bands; sensitivity per family;
curves by absolute and normalized depth; decision/format transfer; the model's answers; the explorer.

Every chart is finished with a short title and the caption naming model, data, n and seed
(:func:`probekit.book.plots.finish`)."""

from __future__ import annotations

from collections.abc import Sequence

import altair as alt
import pandas as pd

from ...book.plots import HEIGHT, WIDTH, caption, finish, legend_selection

STAGE_COLORS = {"before grounding": "#bbbbbb", "visual grounding": "#4c78a8", "lexical integration": "#f58518",
                "semantic reasoning": "#54a24b", "answer decoding": "#b279a2"}


def accuracy_chart(df: pd.DataFrame, *, cap: str, bands: pd.DataFrame | None = None,
                   title: str = "Frozen-probe accuracy per layer", x: str = "layer", color: str = "variant",
                   control: bool = True, width: int = WIDTH, height: int = HEIGHT):
    """Accuracy per layer for each variant (lines), 95 % CI bands, the anchor's shuffled-label control
    (dashed) and chance (dotted); optional stage bands (from :meth:`Segmentation.bands`).

    ``df``: rows of :func:`probekit.probes.probe_store` (layer, variant, family, accuracy, ci_low, ci_high,
    control_accuracy, chance, n_test).
    """
    d = df.copy()
    d["accuracy"] = d.accuracy.astype(float)
    sel = legend_selection(color, f"{color}_legend")
    xenc = alt.X(f"{x}:Q", title="layer (0 = embeddings)" if x == "layer" else x, scale=alt.Scale(nice=False),
                 axis=alt.Axis(tickMinStep=1) if x == "layer" else alt.Axis())
    base = alt.Chart(d).encode(x=xenc)
    tooltip = [alt.Tooltip(f"{x}:Q"), alt.Tooltip(f"{color}:N"), alt.Tooltip("family:N"),
               alt.Tooltip("accuracy:Q", format=".3f"), alt.Tooltip("ci_low:Q", format=".3f", title="CI low"),
               alt.Tooltip("ci_high:Q", format=".3f", title="CI high"),
               alt.Tooltip("control_accuracy:Q", format=".3f", title="shuffled control"),
               alt.Tooltip("n_test:Q", title="n test")]
    col = alt.Color(f"{color}:N", title=color, legend=alt.Legend(orient="right"))
    band = base.mark_area(opacity=0.18).encode(
        y=alt.Y("ci_low:Q", title="probe accuracy", scale=alt.Scale(domain=[0, 1])), y2="ci_high:Q",
        color=alt.Color(f"{color}:N", legend=None), opacity=alt.condition(sel, alt.value(0.2), alt.value(0.03)))
    line = base.mark_line(point=True).encode(
        y="accuracy:Q", color=col, opacity=alt.condition(sel, alt.value(1.0), alt.value(0.15)),
        tooltip=tooltip).add_params(sel)
    layers = []
    if bands is not None and len(bands):
        b = bands.copy()
        stage_scale = alt.Scale(domain=list(STAGE_COLORS), range=list(STAGE_COLORS.values()))
        layers.append(alt.Chart(b).mark_rect(opacity=0.12).encode(
            x="start:Q", x2="end:Q", color=alt.Color("stage:N", scale=stage_scale, title="stage",
                                                     legend=alt.Legend(orient="bottom")),
            tooltip=[alt.Tooltip("stage:N"), alt.Tooltip("first_layer:Q", title="first layer"),
                     alt.Tooltip("last_layer:Q", title="last layer")]))
    layers += [band, line]
    if control and "control_accuracy" in d:
        ctrl = d[d.family == "anchor"].assign(series="shuffled-label control (anchor)")
        if len(ctrl) and ctrl.control_accuracy.notna().any():
            layers.append(alt.Chart(ctrl).mark_line(strokeDash=[5, 3], color="#666").encode(
                x=f"{x}:Q", y="control_accuracy:Q",
                tooltip=[alt.Tooltip(f"{x}:Q"), alt.Tooltip("control_accuracy:Q", format=".3f",
                                                            title="shuffled control")]))
    if "chance" in d and len(d):
        layers.append(alt.Chart(pd.DataFrame({"chance": [float(d.chance.iloc[0])]})).mark_rule(
            strokeDash=[1, 3], color="#999").encode(y="chance:Q", tooltip=[alt.Tooltip("chance:Q", format=".3f")]))
    chart = alt.layer(*layers).resolve_scale(color="independent").properties(width=width, height=height)
    return finish(chart, title, cap)


def sensitivity_chart(seg, *, cap: str, title: str = "Sensitivity per family: accuracy drop below the anchor"):
    """The segmentation's input: per layer, each family's drop below the anchor (``seg.signals['s_<family>']``),
    the ``drop`` threshold (dashed) and the stage bands."""
    rows = []
    for k, v in seg.signals.items():
        if k.startswith("s_"):
            rows += [{"layer": int(l), "family": k[2:], "drop": float(x)} for l, x in zip(seg.layers, v)]
    d = pd.DataFrame(rows, columns=["layer", "family", "drop"])
    sel = legend_selection("family", "family_legend_sens")
    stage_scale = alt.Scale(domain=list(STAGE_COLORS), range=list(STAGE_COLORS.values()))
    bands = alt.Chart(seg.bands()).mark_rect(opacity=0.12).encode(
        x="start:Q", x2="end:Q", color=alt.Color("stage:N", scale=stage_scale, title="stage",
                                                 legend=alt.Legend(orient="bottom")),
        tooltip=["stage:N", alt.Tooltip("first_layer:Q", title="first layer"),
                 alt.Tooltip("last_layer:Q", title="last layer")])
    lines = alt.Chart(d).mark_line(point=True).encode(
        x=alt.X("layer:Q", title="layer (0 = embeddings)", scale=alt.Scale(nice=False), axis=alt.Axis(tickMinStep=1)),
        y=alt.Y("drop:Q", title="anchor accuracy − family accuracy"),
        color=alt.Color("family:N", title="family"),
        opacity=alt.condition(sel, alt.value(1.0), alt.value(0.15)),
        tooltip=["family:N", "layer:Q", alt.Tooltip("drop:Q", format=".3f")],
    ).add_params(sel)
    thr = alt.Chart(pd.DataFrame({"threshold": [seg.params.drop]})).mark_rule(strokeDash=[5, 3], color="#d62728") \
        .encode(y="threshold:Q", tooltip=[alt.Tooltip("threshold:Q", title="drop threshold")])
    chart = alt.layer(bands, lines, thr).resolve_scale(color="independent").properties(width=WIDTH, height=220)
    return finish(chart, title, cap)


def drop_chart(drops: pd.DataFrame, *, kind: str, threshold: float, cap: str, bands: pd.DataFrame | None = None,
               title: str | None = None, width: int = WIDTH, height: int = 220):
    """Per layer, each family's (``kind="family"``) or variant's (``kind="variant"``) accuracy drop below the anchor
    with its simultaneous band (shaded; :mod:`.intervals`), the ``drop`` threshold (dashed) and stage bands."""
    d = drops[drops.kind == kind].rename(columns={"unit": kind})
    sel = legend_selection(kind, f"{kind}_legend_drop")
    xenc = alt.X("layer:Q", title="layer (0 = embeddings)", scale=alt.Scale(nice=False), axis=alt.Axis(tickMinStep=1))
    base = alt.Chart(d).encode(x=xenc)
    col = alt.Color(f"{kind}:N", title=kind, legend=alt.Legend(orient="bottom"))
    layers = []
    if bands is not None and len(bands):
        stage_scale = alt.Scale(domain=list(STAGE_COLORS), range=list(STAGE_COLORS.values()))
        layers.append(alt.Chart(bands).mark_rect(opacity=0.12).encode(
            x="start:Q", x2="end:Q", color=alt.Color("stage:N", scale=stage_scale, title="stage",
                                                     legend=alt.Legend(orient="bottom")),
            tooltip=["stage:N", alt.Tooltip("first_layer:Q", title="first layer"),
                     alt.Tooltip("last_layer:Q", title="last layer")]))
    layers += [
        base.mark_area(opacity=0.15).encode(y=alt.Y("band_lo:Q", title="anchor − variant accuracy"), y2="band_hi:Q",
                                           color=alt.Color(f"{kind}:N", legend=None),
                                           opacity=alt.condition(sel, alt.value(0.18), alt.value(0.02))),
        base.mark_line(point=True).encode(
            y="drop:Q", color=col, opacity=alt.condition(sel, alt.value(1.0), alt.value(0.15)),
            tooltip=[f"{kind}:N", "layer:Q", alt.Tooltip("drop:Q", format=".3f"),
                     alt.Tooltip("band_lo:Q", format=".3f", title="band low"),
                     alt.Tooltip("band_hi:Q", format=".3f", title="band high"), "n_test:Q"]).add_params(sel),
        alt.Chart(pd.DataFrame({"threshold": [threshold]})).mark_rule(strokeDash=[5, 3], color="#d62728").encode(
            y="threshold:Q", tooltip=[alt.Tooltip("threshold:Q", title="drop threshold")]),
    ]
    chart = alt.layer(*layers).resolve_scale(color="independent").properties(width=width, height=height)
    return finish(chart, title or f"Drop below the anchor, per {kind}", cap)


def stage_share_chart(shares: pd.DataFrame, *, cap: str, title: str = "Stage of each layer over resampled images",
                      width: int = WIDTH, height: int = 150):
    """How often each layer gets each stage over bootstrap resamples of the held-out images
    (:func:`.intervals.stage_bootstrap`)."""
    order = list(STAGE_COLORS)
    chart = alt.Chart(shares).mark_rect().encode(
        x=alt.X("layer:O", title="layer"),
        y=alt.Y("stage:N", sort=order, title=None),
        color=alt.Color("share:Q", scale=alt.Scale(scheme="blues", domain=[0, 1]), title="share of resamples"),
        tooltip=["layer:O", "stage:N", alt.Tooltip("share:Q", format=".2f")],
    ).properties(width=width, height=height)
    return finish(chart, title, cap)


def depth_chart(df: pd.DataFrame, *, cap: str, normalized: bool = False, bands: pd.DataFrame | None = None,
                title: str | None = None, width: int = WIDTH, height: int = HEIGHT):
    """Anchor accuracy per layer of several models (``df``: model, layer, depth, accuracy, ci_low, ci_high),
    by absolute layer or by normalized depth (layer / L); optional per-model stage ticks (``bands`` with
    model, stage, start, end in the same x units)."""
    x = "depth" if normalized else "layer"
    xt = "normalized depth (layer / L)" if normalized else "layer (0 = embeddings)"
    sel = legend_selection("model", "model_legend_norm" if normalized else "model_legend_abs")
    base = alt.Chart(df).encode(x=alt.X(f"{x}:Q", title=xt, scale=alt.Scale(nice=False),
                                        axis=alt.Axis() if normalized else alt.Axis(tickMinStep=1)))
    col = alt.Color("model:N", title="model", legend=alt.Legend(orient="bottom", columns=2, labelLimit=400))
    tooltip = [alt.Tooltip("model:N"), alt.Tooltip("layer:Q"), alt.Tooltip("depth:Q", format=".2f"),
               alt.Tooltip("accuracy:Q", format=".3f"), alt.Tooltip("ci_low:Q", format=".3f"),
               alt.Tooltip("ci_high:Q", format=".3f")]
    layers = [
        base.mark_area(opacity=0.15).encode(y=alt.Y("ci_low:Q", title="anchor probe accuracy",
                                                    scale=alt.Scale(domain=[0, 1])), y2="ci_high:Q", color=col,
                                           opacity=alt.condition(sel, alt.value(0.18), alt.value(0.02))),
        base.mark_line(point=True).encode(y="accuracy:Q", color=col, tooltip=tooltip,
                                          opacity=alt.condition(sel, alt.value(1.0), alt.value(0.15))).add_params(sel),
    ]
    chart = alt.layer(*layers).properties(width=width, height=height)
    return finish(chart, title or f"Anchor accuracy by {'normalized depth' if normalized else 'layer'}", cap)


def stage_map_chart(bands: pd.DataFrame, *, cap: str, normalized: bool = True, title: str = "Stages per model",
                    width: int = WIDTH):
    """One row per model, its stages as coloured segments (``bands``: model, stage, start, end, first_layer,
    last_layer, and ``start_norm``/``end_norm`` when normalized)."""
    s, e = ("start_norm", "end_norm") if normalized else ("start", "end")
    stage_scale = alt.Scale(domain=list(STAGE_COLORS), range=list(STAGE_COLORS.values()))
    sel = legend_selection("stage", "stage_legend")
    chart = alt.Chart(bands).mark_bar(height=18).encode(
        x=alt.X(f"{s}:Q", title="normalized depth (layer / L)" if normalized else "layer",
                scale=alt.Scale(nice=False)), x2=f"{e}:Q",
        y=alt.Y("model:N", title=None),
        color=alt.Color("stage:N", scale=stage_scale, title="stage", legend=alt.Legend(orient="bottom", columns=3)),
        opacity=alt.condition(sel, alt.value(1.0), alt.value(0.2)),
        tooltip=["model:N", "stage:N", alt.Tooltip("first_layer:Q", title="first layer"),
                 alt.Tooltip("last_layer:Q", title="last layer")],
    ).add_params(sel).properties(width=width - 140)  # the model names take the rest of the column
    return finish(chart, title, cap)


def answers_chart(answers: pd.DataFrame, *, cap: str, title: str = "The model's answers per prompt variant"):
    """Behaviour check: share of images answered correctly per variant (``probekit.store.answers()``)."""
    g = (answers.groupby(["variant", "family", "expected"], sort=False)
         .agg(correct=("correct", "mean"), margin=("margin", "mean"), n=("correct", "size")).reset_index())
    sel = legend_selection("family", "family_legend_answers")
    chart = alt.Chart(g).mark_bar().encode(
        x=alt.X("correct:Q", title="share answered correctly (expected answer preferred)",
                scale=alt.Scale(domain=[0, 1])),
        y=alt.Y("variant:N", sort=None, title=None),
        color=alt.Color("family:N"),
        opacity=alt.condition(sel, alt.value(1.0), alt.value(0.2)),
        tooltip=["variant:N", "family:N", "expected:N", alt.Tooltip("correct:Q", format=".3f"),
                 alt.Tooltip("margin:Q", format=".2f", title="mean log-prob margin (expected - other)"), "n:Q"],
    ).add_params(sel).properties(width=WIDTH - 120)
    return finish(chart, title, cap)


def behaviour_chart(table: pd.DataFrame, *, cap: str, title: str = "Answered correctly, per prompt and image domain"):
    """Share of images answered correctly per prompt (rows) and image domain (colour), from
    :func:`.analysis.decision_behaviour`; the 0.95 goal as a rule."""
    d = table.rename(columns={"image shows": "image_shows", "answered_correctly": "correct", "correct answer": "answer"})
    base = alt.Chart(d).encode(y=alt.Y("variant:N", sort=None, title=None, axis=alt.Axis(labelLimit=0)))
    bars = base.mark_bar().encode(
        x=alt.X("correct:Q", title="share answered correctly", scale=alt.Scale(domain=[0, 1])),
        yOffset="image_shows:N", color=alt.Color("image_shows:N", title="image shows", legend=alt.Legend(orient="bottom")),
        tooltip=["variant:N", alt.Tooltip("image_shows:N", title="image shows"), alt.Tooltip("answer:N", title="correct answer"),
                 alt.Tooltip("correct:Q", format=".3f"), "n:Q"])
    goal = alt.Chart(pd.DataFrame({"goal": [0.95]})).mark_rule(strokeDash=[4, 3], color="#d62728").encode(x="goal:Q")
    return finish(alt.layer(bars, goal).properties(width=WIDTH - 60), title, cap)


def organism_drops_chart(drops: pd.DataFrame, *, cap: str, threshold: float,
                         title: str = "Drop below the anchor per family, every model"):
    """Small multiples: per model, each family's drop by normalized depth with its simultaneous band."""
    d = drops[drops.kind == "family"].rename(columns={"unit": "family"})
    base = alt.Chart(d).encode(x=alt.X("depth:Q", title="normalized depth", scale=alt.Scale(domain=[0, 1])))
    band = base.mark_area(opacity=0.15).encode(y=alt.Y("band_lo:Q", title="drop"), y2="band_hi:Q",
                                              color=alt.Color("family:N", legend=None))
    line = base.mark_line().encode(y="drop:Q", color=alt.Color("family:N", legend=alt.Legend(orient="bottom")),
                                   tooltip=["model:N", "family:N", "layer:Q", alt.Tooltip("drop:Q", format=".3f")])
    rule = alt.Chart(pd.DataFrame({"t": [threshold]})).mark_rule(strokeDash=[5, 3], color="#d62728").encode(y="t:Q")
    chart = alt.layer(band, line, rule, data=d).properties(width=150, height=110).facet(
        facet=alt.Facet("model:N", title=None, header=alt.Header(labelLimit=0)), columns=3)
    return finish(chart, title, cap)


def transfer_chart(df: pd.DataFrame, *, cap: str, parting: int | None = None,
                   title: str = "Decision probes within and across answer formats"):
    """Accuracy per layer of each (train format -> test format) series (``df``: layer, series, accuracy,
    ci_low, ci_high, chance); a vertical rule at the parting layer."""
    sel = legend_selection("series", "series_legend")
    base = alt.Chart(df).encode(x=alt.X("layer:Q", title="layer (0 = embeddings)", scale=alt.Scale(nice=False),
                                        axis=alt.Axis(tickMinStep=1)))
    col = alt.Color("series:N", title="probe (train → test)")
    layers = [
        base.mark_area(opacity=0.15).encode(y=alt.Y("ci_low:Q", title="decision-probe accuracy",
                                                    scale=alt.Scale(domain=[0, 1])), y2="ci_high:Q", color=col,
                                           opacity=alt.condition(sel, alt.value(0.18), alt.value(0.02))),
        base.mark_line(point=True).encode(
            y="accuracy:Q", color=col, opacity=alt.condition(sel, alt.value(1.0), alt.value(0.15)),
            tooltip=["series:N", "layer:Q", alt.Tooltip("accuracy:Q", format=".3f"),
                     alt.Tooltip("ci_low:Q", format=".3f"), alt.Tooltip("ci_high:Q", format=".3f")],
        ).add_params(sel),
    ]
    if "chance" in df and len(df):
        layers.append(alt.Chart(pd.DataFrame({"chance": [float(df.chance.iloc[0])]})).mark_rule(
            strokeDash=[1, 3], color="#999").encode(y="chance:Q"))
    if parting is not None:
        layers.append(alt.Chart(pd.DataFrame({"layer": [parting], "label": [f"formats part at layer {parting}"]}))
                      .mark_rule(color="#d62728", strokeWidth=2).encode(x="layer:Q", tooltip=["label:N"]))
    chart = alt.layer(*layers).properties(width=WIDTH, height=HEIGHT)
    return finish(chart, title, cap)


PARTING_STATUS = {"decision shared (certain)": "#4c78a8", "formats part (certain)": "#d62728", "undecided": "#999999"}


def gap_chart(df, *, cap: str, title: str = "Where the formats part: within-format minus transfer accuracy"):
    """Chapter 3's per-layer table as a chart: the gap (within-format minus transfer accuracy) with its simultaneous
    band, the ``drop`` threshold (dashed), each layer coloured by what the bands decide."""
    t = df.table
    status = ["decision shared (certain)" if sh else "formats part (certain)" if pa else "undecided"
              for sh, pa in zip(t["shared (certain)"], t["formats part (certain)"])]
    d = t.assign(status=status)[["layer", "within", "transfer", "gap", "gap band low", "gap band high", "status"]]
    d = d.rename(columns={"gap band low": "lo", "gap band high": "hi"})
    x = alt.X("layer:Q", title="layer (0 = embeddings)", scale=alt.Scale(nice=False), axis=alt.Axis(tickMinStep=1))
    band = alt.Chart(d).mark_area(opacity=0.2, color="#888").encode(x=x, y=alt.Y("lo:Q", title="gap"), y2="hi:Q")
    scale = alt.Scale(domain=list(PARTING_STATUS), range=list(PARTING_STATUS.values()))
    pts = alt.Chart(d).mark_line(color="#555").encode(x=x, y="gap:Q") + alt.Chart(d).mark_point(filled=True, size=45).encode(
        x=x, y="gap:Q", color=alt.Color("status:N", scale=scale, title="the bands decide",
                                        legend=alt.Legend(orient="bottom")),
        tooltip=["layer:Q", alt.Tooltip("within:Q", format=".3f"), alt.Tooltip("transfer:Q", format=".3f"),
                 alt.Tooltip("gap:Q", format=".3f"), alt.Tooltip("lo:Q", format=".3f", title="band low"),
                 alt.Tooltip("hi:Q", format=".3f", title="band high"), "status:N"])
    thr = alt.Chart(pd.DataFrame({"threshold": [df.params.drop]})).mark_rule(strokeDash=[5, 3], color="#d62728") \
        .encode(y="threshold:Q", tooltip=[alt.Tooltip("threshold:Q", title="drop threshold")])
    return finish(alt.layer(band, pts, thr).properties(width=WIDTH, height=220), title, cap)


def explorer_chart(table: pd.DataFrame, *, cap: str, layers: Sequence[int], families: Sequence[str],
                   classes: Sequence[str], layer: int, family: str,
                   title: str = "Explorer: per-class accuracy and confusion matrix"):
    """The explorer's static view, interactive without a kernel: choose the variant family (dropdown) and
    the layer (slider); click a class bar to highlight its row of the confusion matrix.

    ``table``: one row per (family, layer, true, pred) with ``count`` (see
    :func:`probekit.book.widgets.confusion_table`).
    """
    fam = alt.param(name="family", value=family, bind=alt.binding_select(options=list(families),
                                                                          name="variant family "))
    lay = alt.param(name="layer", value=int(layer), bind=alt.binding_range(min=int(min(layers)),
                                                                            max=int(max(layers)), step=1,
                                                                            name="layer "))
    cls = alt.selection_point(fields=["true"], name="cls", empty=True)
    base = alt.Chart(table).transform_filter("datum.family == family && datum.layer == layer")
    per_class = base.transform_aggregate(
        total="sum(count)", right="sum(correct_count)", groupby=["true"]
    ).transform_calculate(accuracy="datum.right / datum.total").mark_bar().encode(
        x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="per-class accuracy"),
        y=alt.Y("true:N", sort=list(classes), title="true class"),
        color=alt.condition(cls, alt.value("#4c78a8"), alt.value("#c7d3e3")),
        tooltip=[alt.Tooltip("true:N", title="class"), alt.Tooltip("accuracy:Q", format=".3f"),
                 alt.Tooltip("right:Q", title="correct"), alt.Tooltip("total:Q", title="n")],
    ).add_params(fam, lay, cls).properties(width=220, height=260)
    conf = base.mark_rect().encode(
        x=alt.X("pred:N", sort=list(classes), title="predicted class", axis=alt.Axis(labelLimit=0, labelAngle=-60)),
        y=alt.Y("true:N", sort=list(classes), title=None, axis=alt.Axis(labels=False)),
        color=alt.Color("count:Q", scale=alt.Scale(scheme="blues"), title="images"),
        opacity=alt.condition(cls, alt.value(1.0), alt.value(0.35)),
        tooltip=["true:N", "pred:N", "count:Q"],
    ).properties(width=240, height=260)
    chart = alt.hconcat(per_class, conf)
    return finish(chart, title, cap)


def pair_charts(comp, *, seed: int, data_label: str, n: int):
    """One normalized-depth chart per controlled pair (anchor and every variant of both models)."""
    out = []
    for _, p in comp.pairs.iterrows():
        d = comp.curves[comp.curves.model.isin([p.model, p.reference]) & (comp.curves.variant == "anchor")]
        cap = caption(model=f"{p.model} vs {p.reference}", data=data_label, n=f"{n} images per model", seed=seed,
                      extra=f"factor: {p.factor}{'' if p.controlled else ' (not a controlled pair)'}")
        out.append(depth_chart(d, cap=cap, normalized=True, title=f"{p.factor}: {p.model} vs {p.reference}"))
    return out


__all__ = ["STAGE_COLORS", "accuracy_chart", "answers_chart", "behaviour_chart", "depth_chart", "drop_chart",
           "explorer_chart", "organism_drops_chart",
           "sensitivity_chart", "stage_share_chart",
           "stage_map_chart", "transfer_chart"]
