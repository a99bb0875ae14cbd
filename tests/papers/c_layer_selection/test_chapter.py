"""Chapter 06 (paper C): LRS groups, fusion and probes from stored arrays; the pipeline end to end on a tiny model,
its stores, a re-run that loads no model, its record for the reproduction-status page, and the notebook
(papermill with small parameters, then nbval)."""

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from notebook_tools import RECORD, assert_nbval, outputs, run_papermill

from probekit.errors import ProbekitError
from probekit.papers.c_layer_selection import analysis, chapter, charts, claims
from probekit.papers.c_layer_selection.analysis import (
    group_layers,
    mean_similarity,
    probe_layers,
    representative_layers,
)
from probekit.papers.c_layer_selection.tasks import TASKS

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOK = ROOT / "notebooks" / "06_visual_layer_selection.ipynb"


# ---- analysis on arrays ---------------------------------------------------------------------------------


def planted(sizes, within=0.9, between=0.3, noise=0.02, seed=0):
    """A block-structured similarity matrix over layers 0..V (layer 0 = embeddings, its own block)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([[-1]] + [[g] * s for g, s in enumerate(sizes)])
    S = np.where(labels[:, None] == labels[None, :], within, between) + rng.normal(0, noise, (len(labels),) * 2)
    S = (S + S.T) / 2
    np.fill_diagonal(S, 1.0)
    return S


@pytest.mark.parametrize("sizes", [(12, 8, 4), (4, 4, 4), (1, 10, 2), (7, 3, 14)])
def test_planted_blocks_are_recovered_exactly(sizes):
    cuts = group_layers(planted(sizes))
    starts = np.cumsum((1,) + sizes[:-1])
    assert cuts == [range(s, s + n) for s, n in zip(starts, sizes)]


def test_clip_like_gradient_with_min_size_and_other_group_counts():
    # a smooth decay plus a sharp break: the break must be one of the cuts
    V = 24
    i = np.arange(V + 1)
    S = np.exp(-np.abs(i[:, None] - i[None, :]) / 6.0)
    S[:13, 13:] *= 0.3
    S[13:, :13] *= 0.3
    cuts = group_layers(S, 3)
    assert any(c.start == 13 for c in cuts)
    assert [len(c) for c in group_layers(S, 4, min_size=3)] and all(len(c) >= 3 for c in group_layers(S, 4, min_size=3))
    assert group_layers(S, 1) == [range(1, V + 1)]
    with pytest.raises(ProbekitError, match="cannot cut"):
        group_layers(S, 30)


def test_mean_similarity_sums_in_image_order_in_float32():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (300, 5, 5)).astype(np.float32)
    total = np.zeros((5, 5), np.float32)
    for s in x:
        total = total + s
    np.testing.assert_array_equal(mean_similarity(x), (total / np.float32(len(x))).astype(np.float64))
    np.testing.assert_allclose(mean_similarity(x), x.astype(np.float64).mean(0), atol=1e-6)
    with pytest.raises(ProbekitError, match="per-image similarities"):
        mean_similarity(x[:, :, :4])


def test_representative_layers():
    groups = [range(1, 13), range(13, 21), range(21, 25)]
    assert representative_layers(groups) == [12, 20, 24]
    assert representative_layers(groups, "first") == [1, 13, 21]
    assert representative_layers(groups, "middle") == [6, 16, 22]
    with pytest.raises(ProbekitError, match="fusion rule"):
        representative_layers(groups, "best")


def test_probe_layers_finds_the_informative_layer_and_fuses():
    rng = np.random.default_rng(0)
    n, d = 240, 8
    y = np.arange(n) % 3
    X = rng.normal(size=(n, 4, d))
    X[:, 2, :3] += 3 * np.eye(3)[y]  # layer 2 carries the label
    df = probe_layers(X, y, fusion=[1, 2, 3], seed=0, n_boot=200, task="t")
    lay = df[df.kind == "layer"].set_index("layer")
    assert lay.accuracy.idxmax() == 2 and lay.accuracy[2] > 0.9 and lay.accuracy[0] < 0.6
    fus = df[df.kind == "fusion"].iloc[0]
    assert fus.layers == "1+2+3" and fus.n_features == 3 * d and fus.accuracy > 0.85
    assert (df.ci_low <= df.accuracy).all() and (df.accuracy <= df.ci_high).all()
    assert df.n_test.nunique() == 1  # one split for every layer and the fusion


# ---- the chapter on a tiny model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    """A tiny llava whose vision tower has 4 blocks (enough for shallow / middle / deep)."""
    from probekit.models.build import build_tiny

    return build_tiny("llava", tmp_path_factory.mktemp("tiny4") / "llava", seed=0, text_layers=2, vision_layers=4)


def test_pipeline_end_to_end_and_stored(tiny4, tmp_path):
    vr = chapter.run(str(tiny4), n_per_class=4, cache_dir=tmp_path, seed=0)
    assert not vr.from_cache and vr.lm is not None and vr.cache_path.is_dir()
    assert sorted(p.name.split("-")[0] for p in vr.cache_path.iterdir()) == sorted(TASKS)  # one store per task
    assert vr.n_layers == 4 and vr.image_size == 28 and vr.default_layer == 3  # llava: penultimate
    assert vr.groups[0][0] == 1 and vr.groups[-1][-1] == 4 and len(vr.groups) == 3
    assert vr.fusion == [g[-1] for g in vr.groups]
    res = analysis.probe_tasks(vr, n_boot=100)
    assert list(res.task.unique()) == list(TASKS)
    assert len(res) == len(TASKS) * (vr.n_layers + 2)  # layers 0..V and the fusion
    assert res.accuracy.between(0, 1).all() and (res.ci_low <= res.ci_high).all()
    assert set(res.group) == {"embeddings", "shallow", "middle", "deep", "fusion"}
    again = chapter.run(str(tiny4), n_per_class=4, cache_dir=tmp_path, seed=0)
    assert again.from_cache and again.lm is None
    for t in TASKS:
        np.testing.assert_array_equal(again.features[t].grid, vr.features[t].grid)
    other = chapter.run(str(tiny4), n_per_class=4, cache_dir=tmp_path, seed=1, lm=vr.lm)
    assert other.cache_path != vr.cache_path and not other.from_cache
    rec = claims.record_payload(vr, res)
    assert set(rec["tasks"]) == set(TASKS) and rec["fusion_layers"] == vr.fusion
    rows = claims.status_rows(rec)
    # the record travels through the notebook as JSON with sorted keys: the rows must not change
    assert claims.status_rows(json.loads(json.dumps(rec, sort_keys=True, default=str))) == rows
    assert rows[0].index("shallow") < rows[0].index("middle") < rows[0].index("deep")
    assert all(r.startswith("| (C) ") and r.count(" | ") == 4 for r in rows)
    words = [r.split(" | ")[3] for r in rows]
    assert set(words) <= {"reproduced", "not reproduced", "inconclusive", "—"}
    verdicts = claims.verdict_rows(rec)
    assert {"groups", "ocr", "counting", "positioning", "fusion"} <= set(verdicts)
    assert sum(w != "—" for w in words) == len(verdicts)
    assert claims.verdict_paragraph(rec).startswith(f"**Verdicts on `{tiny4}`**")
    assert any("OCR" in r for r in rows) and any("not run" in r for r in rows)
    assert all("**confirmed**" in r or "**secondary**" in r for r in rows)
    assert all(r.split("|")[3].strip() == "not measured in this build" for r in claims.status_rows(None))
    for chart in (charts.lrs_chart(vr), charts.task_chart(vr, res)):
        spec = chart.to_dict()
        assert spec["usermeta"]["caption"].startswith(f"Model: {tiny4}")
    assert "fusion" in claims.findings_note(vr, res) and len(analysis.summary_table(vr, res)) == len(TASKS)
    with pytest.raises(ProbekitError, match="not supported"):
        chapter.run(str(tiny4), dataset="imagenet-dogs", cache_dir=tmp_path, lm=vr.lm)


def chapter_outputs(vr):
    """Everything the notebook shows or records, as comparable values."""
    res = analysis.probe_tasks(vr, n_boot=100)
    rec = claims.record_payload(vr, res)
    tables = {"facts": analysis.model_facts(vr), "tasks": analysis.task_table(vr), "groups": vr.group_table(),
              "per task": analysis.groups_per_task(vr), "summary": analysis.summary_table(vr, res),
              "features": analysis.feature_set_table(vr, res, n_boot=50)}
    return {"record": json.dumps(rec, sort_keys=True), "rows": claims.status_rows(rec),
            "note": claims.findings_note(vr, res), "tables": {k: t.to_json() for k, t in tables.items()},
            "charts": [json.dumps(c.to_dict(), sort_keys=True) for c in (charts.lrs_chart(vr), charts.task_chart(vr, res))],
            "samples": charts.samples_html(vr)}


def test_a_rerun_on_complete_stores_loads_no_model(tiny4, tmp_path, monkeypatch):
    import transformers

    import probekit.models

    first = chapter.run(str(tiny4), n_per_class=4, cache_dir=tmp_path, seed=0)
    want = chapter_outputs(first)

    def refuse(*a, **k):
        raise AssertionError("a re-run on complete stores loaded the model")

    monkeypatch.setattr(probekit.models, "load_model", refuse)
    monkeypatch.setattr(transformers.LlavaForConditionalGeneration, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", classmethod(refuse))
    again = chapter.run(str(tiny4), n_per_class=4, cache_dir=tmp_path, seed=0)
    assert again.from_cache and again.lm is None and again.cache_path == first.cache_path
    assert chapter_outputs(again) == want
    # an incomplete store is the one case that needs the model (and here it is refused)
    next(p for p in first.cache_path.iterdir() if p.name.startswith("count-")).joinpath(
        "shard-00000.safetensors").unlink()
    with pytest.raises(AssertionError, match="loaded the model"):
        chapter.run(str(tiny4), n_per_class=4, cache_dir=tmp_path, seed=0)


@pytest.mark.slow
def test_notebook_papermill_then_nbval(tiny4, tmp_path):
    out = run_papermill("06_visual_layer_selection", tmp_path, {"model_id": str(tiny4), "n_per_class": 4,
                                                             "cache_dir": str(tmp_path / "cache"), "seed": 0})
    nb = nbformat.read(out, as_version=4)
    html = "\n".join(outputs(nb, "text/html"))
    assert html.count("altair-viz-") >= 2 and f"Model: {tiny4}" in html and "seed = 0" in html
    rec = next(outputs(nb, RECORD))
    assert rec["name"] == claims.RECORD_NAME and rec["vision_layers"] == 4
    assert_nbval(out)
