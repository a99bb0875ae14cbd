"""How the book draws charts: probekit's altair renderer, the caption every chart carries and the title it
is finished with, and inline images. The charts themselves live with their paper (``probekit.papers.*.charts``).

Every chart carries a caption naming model, data, n and seed (:func:`caption`); probekit's renderer draws it
as a ``<figcaption>`` under the chart (not as a subtitle, which a long model list would push past the page
column), and the chart keeps only its short title. Charts are interactive (tooltips;
click a legend entry to highlight one series, shift-click for more).

Rendering. ``enable()`` switches altair to probekit's ``text/html`` renderer. Its output is a ``<div
id="altair-viz-<hex>">`` plus a script that calls ``vegaEmbed`` when the vega libraries are already on the
page — the book ships them in ``_static/vega`` and loads them in every page's ``<head>``, so charts render
with the network off — and otherwise loads them (live notebooks; from ``VEGA_BASE_URL``). altair 6's
``mimetype`` renderer is not used: its MIME type (``application/vnd.vegalite.v6.json``) holds a dict, which
nbformat refuses, so papermill cannot write it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import uuid
from collections.abc import Mapping

import altair as alt

VEGA_BASE_URL = "https://cdn.jsdelivr.net/npm"
VEGA_VERSIONS = {"vega": "6", "vega-lite": alt.SCHEMA_VERSION.lstrip("v"), "vega-embed": "7"}
WIDTH, HEIGHT = 440, 260

_SCRIPT = """(function() {
  var spec = %(spec)s;
  var sel = "#%(div)s";
  var opt = {"mode": "vega-lite", "actions": false};
  function show(embed) { embed(sel, spec, opt).catch(function(err) {
    document.querySelector(sel).textContent = "chart error: " + err; }); }
  if (typeof vegaEmbed === "function") { show(vegaEmbed); return; }
  if (typeof define === "function" && define.amd && typeof require === "function") {
    require.config({paths: %(amd)s});
    require(["vega-embed"], show, function() {
      document.querySelector(sel).textContent = "the vega libraries could not be loaded"; });
    return;
  }
  var urls = %(urls)s;
  function load(i) {
    if (i >= urls.length) { show(vegaEmbed); return; }
    var s = document.createElement("script");
    s.src = urls[i];
    s.onload = function() { load(i + 1); };
    s.onerror = function() { document.querySelector(sel).textContent =
      "the vega libraries could not be loaded from " + urls[i] + " (offline? the built book ships them)"; };
    document.head.appendChild(s);
  }
  load(0);
})();"""


def _lib_urls(base: str) -> dict[str, str]:
    return {k: f"{base}/{k}@{v}" for k, v in VEGA_VERSIONS.items()}


def chart_html(spec: Mapping, *, div_id: str | None = None, base_url: str = VEGA_BASE_URL) -> str:
    """HTML for one chart: a figure with the vega-embed target div and the caption from ``usermeta``."""
    div = div_id or f"altair-viz-{uuid.uuid4().hex}"
    caption = (spec.get("usermeta") or {}).get("caption")
    urls = _lib_urls(base_url)
    script = _SCRIPT % {
        "spec": json.dumps(spec, sort_keys=True).replace("</", "<\\/"),
        "div": div,
        "amd": json.dumps({k: u + "?noext" for k, u in urls.items()}),
        "urls": json.dumps([urls["vega"], urls["vega-lite"], urls["vega-embed"]]),
    }
    cap = f'\n<figcaption class="probekit-caption">{html.escape(caption)}</figcaption>' if caption else ""
    return (f'<figure class="probekit-chart">\n<div id="{div}" class="probekit-vega"></div>{cap}\n</figure>\n'
            f'<script type="text/javascript">\n{script}\n</script>')


def probekit_renderer(spec: dict, **metadata) -> dict:
    caption = (spec.get("usermeta") or {}).get("caption", "")
    return {"text/html": chart_html(spec), "text/plain": f"<probekit chart: {caption}>"}


def enable() -> None:
    """Register and enable probekit's renderer; lift altair's 5,000-row limit (data stay inline)."""
    if "probekit" not in alt.renderers.names():
        alt.renderers.register("probekit", probekit_renderer)
    alt.renderers.enable("probekit")
    alt.data_transformers.disable_max_rows()


def caption(*, model: str, data: str, n: int | str, seed: int, extra: str | None = None) -> str:
    """The caption every chart carries: model, data, n and seed (plus optional details)."""
    text = f"Model: {model} · data: {data} · n = {n} · seed = {seed}"
    return f"{text} · {extra}" if extra else text


def finish(chart, title: str, cap: str):
    """A chart with its (short) title; the caption naming model, data, n and seed goes below it (``usermeta``,
    drawn by the renderer as a figcaption)."""
    return chart.properties(title=alt.TitleParams(title, anchor="start"), usermeta={"caption": cap})


def legend_selection(field: str, name: str):
    """Click a legend entry to highlight one series (shift-click for more)."""
    return alt.selection_point(fields=[field], bind="legend", name=name)


def img_tag(image, size: int, alt: str = "") -> str:
    """An inline PNG ``<img>`` of a PIL image, ``size`` px square, drawn pixelated (renders without a kernel)."""
    from PIL import Image

    buf = io.BytesIO()
    image.resize((size, size), Image.Resampling.NEAREST).save(buf, format="PNG")
    return (f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}" width="{size}" '
            f'height="{size}" style="image-rendering:pixelated;margin:1px" alt="{html.escape(alt)}">')



__all__ = ["HEIGHT", "WIDTH", "caption", "chart_html", "enable", "finish", "img_tag", "legend_selection",
           "probekit_renderer"]
