"""Chapter 06 (paper C): the per-layer task-probe pipeline end to end on a tiny model, its cache, its record
for the reproduction-status page, and the notebook (papermill with small parameters, then nbval)."""

import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from notebook_tools import RECORD, assert_nbval, outputs, run_papermill

from probekit import vision_chapter as vc
from probekit.errors import ProbekitError
from probekit.papers.c_layer_selection.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "06_visual_layer_selection.ipynb"


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    """A tiny llava whose vision tower has 4 blocks (enough for shallow / middle / deep)."""
    from probekit.models.build import build_tiny

    return build_tiny("llava", tmp_path_factory.mktemp("tiny4") / "llava", seed=0, text_layers=2, vision_layers=4)


def test_pipeline_end_to_end_and_cached(tiny4, tmp_path):
    vr = vc.run(str(tiny4), n_per_class=4, cache_dir=tmp_path, seed=0)
    assert not vr.from_cache and vr.cache_path.is_file()
    assert vr.n_layers == 4 and vr.image_size == 28 and vr.default_layer == 3  # llava: penultimate
    assert vr.groups[0][0] == 1 and vr.groups[-1][-1] == 4 and len(vr.groups) == 3
    assert vr.fusion == [g[-1] for g in vr.groups]
    res = vc.probe_tasks(vr, n_boot=100)
    assert list(res.task.unique()) == list(TASKS)
    assert len(res) == len(TASKS) * (vr.n_layers + 2)  # layers 0..V and the fusion
    assert res.accuracy.between(0, 1).all() and (res.ci_low <= res.ci_high).all()
    assert set(res.group) == {"embeddings", "shallow", "middle", "deep", "fusion"}
    again = vc.run(str(tiny4), n_per_class=4, cache_dir=tmp_path, seed=0)
    assert again.from_cache
    for t in TASKS:
        np.testing.assert_array_equal(again.features[t].grid, vr.features[t].grid)
    other = vc.run(str(tiny4), n_per_class=4, cache_dir=tmp_path, seed=1, lm=vr.lm)
    assert other.cache_path != vr.cache_path
    rec = vc.record_payload(vr, res)
    assert set(rec["tasks"]) == set(TASKS) and rec["fusion_layers"] == vr.fusion
    rows = vc.status_rows(rec)
    # the record travels through the notebook as JSON with sorted keys: the rows must not change
    assert vc.status_rows(json.loads(json.dumps(rec, sort_keys=True, default=str))) == rows
    assert rows[0].index("shallow") < rows[0].index("middle") < rows[0].index("deep")
    assert all(r.startswith("| (C) ") and r.count(" | ") == 3 for r in rows)
    assert any("OCR" in r for r in rows) and any("not run" in r for r in rows)
    assert all("**confirmed**" in r or "**secondary**" in r for r in rows)
    assert all(r.split("|")[3].strip() == "not measured in this build" for r in vc.status_rows(None))
    for chart in (vc.lrs_chart(vr), vc.task_chart(vr, res)):
        spec = chart.to_dict()
        assert spec["usermeta"]["caption"].startswith(f"Model: {tiny4}")
    assert "fusion" in vc.findings_note(vr, res) and len(vc.summary_table(vr, res)) == len(TASKS)
    with pytest.raises(ProbekitError, match="not supported"):
        vc.run(str(tiny4), dataset="imagenet-dogs", cache_dir=tmp_path, lm=vr.lm)


@pytest.mark.slow
def test_notebook_papermill_then_nbval(tiny4, tmp_path):
    out = run_papermill("06_visual_layer_selection", tmp_path, {"model_id": str(tiny4), "n_per_class": 4,
                                                             "cache_dir": str(tmp_path / "cache"), "seed": 0})
    nb = nbformat.read(out, as_version=4)
    html = "\n".join(outputs(nb, "text/html"))
    assert html.count("altair-viz-") >= 2 and f"Model: {tiny4}" in html and "seed = 0" in html
    rec = next(outputs(nb, RECORD))
    assert rec["name"] == vc.RECORD_NAME and rec["vision_layers"] == 4
    assert_nbval(out)
