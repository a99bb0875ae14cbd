"""Charts (captions, interactivity, offline-capable HTML) and the explorer (live widget + static view)."""

import json

import pytest

from probekit.book import plots
from probekit.book.widgets import Explorer
from probekit.papers.a_stages import analysis, chapter, charts
from probekit.papers.a_stages.stages import segment_results


@pytest.fixture(scope="module")
def probed(tiny_dirs, fashion, tmp_path_factory):
    run = chapter.run(str(tiny_dirs["llava"]), n_per_class=3, cache_dir=tmp_path_factory.mktemp("c"), seed=0,
                       data=fashion)
    res = analysis.probe(run, n_boot=50)
    return run, res


def test_accuracy_chart_caption_and_interactivity(probed):
    run, res = probed
    plots.enable()
    seg = segment_results(res)
    cap = run.caption()
    for token in ("Model: ", str(run.model_id), "n = ", "seed = 0", "fashion-mnist"):
        assert token in cap
    spec = charts.accuracy_chart(res, bands=seg.bands(), cap=cap).to_dict()
    assert spec["usermeta"]["caption"] == cap
    assert "subtitle" not in spec["title"]  # the long caption goes under the chart, not into its title block
    s = json.dumps(spec)
    assert '"bind": "legend"' in s and '"tooltip"' in s
    bundle = plots.probekit_renderer(spec)
    html = bundle["text/html"]
    assert 'id="altair-viz-' in html and '<figcaption class="probekit-caption">' in html
    assert "vegaEmbed" in html and "application/vnd.vegalite" not in json.dumps(bundle)


def test_explorer_live_and_static(probed):
    run, res = probed
    ex = Explorer(run.store, res.attrs["probes"], seed=0, cap=run.caption())
    assert set(ex.families) == {"anchor", "lexical", "semantic_negation", "output_format"}
    m = ex.confusion("anchor", ex.layers[-1])
    assert m.to_numpy().sum() == int(res.n_test.iloc[0])  # every held-out image once
    box = ex.widget()
    (fam, layer, cls), out = box.children[0].children, box.children[1]
    before = out.value
    layer.value = 0 if layer.value != 0 else 1
    cls.value = ex.classes[0]
    assert out.value != before and "background:#fff3c4" in out.value
    spec = ex.static().to_dict()
    s = json.dumps(spec)
    assert '"binding_select"' not in s and '"input": "select"' in s and '"input": "range"' in s
