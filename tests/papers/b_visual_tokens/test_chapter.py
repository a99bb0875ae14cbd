"""Chapter 05 (paper B): the ground-truth rule, the correspondence and query scores, the input-agnostic-key rule
on synthetic inputs with known answers; the chapter pipeline end to end on a tiny model (cache, conditions,
record); a re-run on complete stores loads no model, in process and through the notebook; the notebook
(parameters, then papermill with small parameters and nbval)."""

import json
import re
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from notebook_tools import RECORD, assert_nbval, outputs, run_papermill

from probekit.errors import ModelLoadError, ProbekitError
from probekit.papers.b_visual_tokens import analysis, charts, claims
from probekit.papers.b_visual_tokens import chapter as vtc
from probekit.papers.b_visual_tokens import readouts as vt

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOK = ROOT / "notebooks" / "05_visual_tokens.ipynb"


# ---- the foreground rule --------------------------------------------------------------------------------------


def test_foreground_rule_on_a_synthetic_image():
    img = np.zeros((1, 8, 8), np.uint8)
    img[0, :4, :4] = 200  # top-left cell: all ink
    img[0, :2, 4:] = 200  # top-right: exactly half its pixels ink -> foreground (>= min_fraction)
    img[0, 4:5, :4] = 200  # bottom-left: a quarter -> background
    img[0, 4:, 4:] = vt.INK  # bottom-right: all at the ink threshold, not brighter -> background
    np.testing.assert_array_equal(vt.foreground_masks(img, (2, 2)), [[True, True, False, False]])
    np.testing.assert_array_equal(vt.foreground_masks(img, (2, 2), min_fraction=0.25), [[True, True, True, False]])
    np.testing.assert_array_equal(vt.foreground_masks(img, (2, 2), ink=vt.INK - 1), [[True, True, False, True]])
    rgb = np.repeat(img[..., None], 3, -1)
    rgb[..., 1:] = 0  # any channel counts
    np.testing.assert_array_equal(vt.foreground_masks(rgb, (2, 2)), vt.foreground_masks(img, (2, 2)))
    with pytest.raises(ProbekitError, match="does not fit"):
        vt.foreground_masks(img, (9, 9))


def test_image_transforms_agree_with_their_cell_maps():
    rng = np.random.default_rng(0)
    grid = (4, 4)
    imgs = np.zeros((30, 28, 28), np.uint8)
    for im in imgs:  # random cells lit
        for c in np.flatnonzero(rng.random(16) < 0.4):
            r, cc = divmod(c, 4)
            im[7 * r:7 * r + 7, 7 * cc:7 * cc + 7] = 255
    m = vt.foreground_masks(imgs, grid)
    fm = vt.foreground_masks(vt.flip_images(imgs), grid)
    np.testing.assert_array_equal(fm[:, vt.flip_map(grid)], m)  # cell c of an image is flip_map[c] of its mirror
    px = vt.shift_pixels(28, 4, 1)
    sm = vt.foreground_masks(vt.shift_images(imgs, px), grid)
    mp = vt.shift_map(grid, 1)
    keep = mp >= 0
    np.testing.assert_array_equal(sm[:, mp[keep]], m[:, keep])
    assert not sm[:, [0, 4, 8, 12]].any()  # the first column is filled black
    assert (mp == -1).sum() == 4
    with pytest.raises(ProbekitError, match="multiple"):
        vt.shift_pixels(30, 4, 1)


# ---- correspondence, text queries ------------------------------------------------------------------------------


def test_correspondence_is_perfect_for_identical_features_and_chance_for_random_ones():
    rng = np.random.default_rng(0)
    grid, n, d = (4, 4), 400, 32
    src = rng.normal(size=(n, 16, d))
    points = rng.random((n, 16)) < 0.5
    for mp in (vt.flip_map(grid), vt.shift_map(grid, 1)):
        tgt = rng.normal(size=(n, 16, d))
        keep = mp >= 0
        tgt[:, mp[keep]] = src[:, keep]  # the target image holds each source cell's content at its mapped cell
        c = vt.correspondence(src, tgt, mp, points, grid)
        assert c["pck0"] == 1.0 and c["pck1"] == 1.0
        assert c["n_points"] == int((points & keep).sum()) == int(c["points"].sum())
        r = vt.correspondence(src, rng.normal(size=(n, 16, d)), mp, points, grid)
        assert abs(r["pck0"] - r["chance0"]) < 0.02 and r["chance0"] == 1 / 16
        assert abs(r["pck1"] - r["chance1"]) < 0.04 and 0.2 < r["chance1"] < 0.6
    # the identity matching (features that only encode position) is wrong under a flip
    same = vt.correspondence(src, src, vt.flip_map(grid), np.ones((n, 16), bool), grid)
    assert same["pck0"] == 0.0


def test_query_auroc_equals_sklearn_per_image():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    scores = rng.integers(0, 5, size=(50, 16)).astype(float)  # many ties
    y = rng.random((50, 16)) < 0.4
    y[0] = True  # one image without background: no AUROC
    got = vt.query_auroc(scores, y)
    assert np.isnan(got[0])
    want = [roc_auc_score(y[i], scores[i]) for i in range(1, 50)]
    np.testing.assert_allclose(got[1:], want, atol=1e-12)
    s = rng.normal(size=(3, 16))
    np.testing.assert_allclose(vt.query_scores(np.repeat(s[..., None], 2, -1), np.ones((3, 2))), 2 * s)


# ---- few-shot segmentation ----------------------------------------------------------------------------------------


def test_few_shot_segmentation_separates_separable_tokens_and_not_random_ones():
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(2)
    n, T, d = 40, 16, 8
    y = rng.random((n, T)) < 0.5
    X = rng.normal(size=(n, T, d))
    Xs = X + 6.0 * y[..., None] * np.eye(d)[0]  # foreground tokens shifted far along one axis
    eps = vt.segmentation_episodes(np.arange(20), y, shots=3, episodes=4, seed=0)
    assert len(eps) == 4 and all(len(e) == 3 for e in eps)
    test = np.arange(20, 40)
    good = vt.few_shot_segmentation(Xs, y, eps, test)
    bad = vt.few_shot_segmentation(X, y, eps, test)
    assert good["miou"] > 0.95 and good["balanced_accuracy"] > 0.97
    assert bad["miou"] < 0.45 and abs(bad["balanced_accuracy"] - 0.5) < 0.1
    # the per-image counts recompute the pooled scores (the basis of the bootstrap intervals)
    for r in (good, bad):
        assert r["counts"].shape == (20, 4) and r["counts"].sum() == 4 * 20 * T
        assert vt.miou_from_counts(r["counts"].sum(0)) == pytest.approx(r["miou"], abs=1e-12)
        assert vt.balanced_accuracy_from_counts(r["counts"].sum(0)) == pytest.approx(r["balanced_accuracy"], abs=1e-12)
    yy = np.array([1, 1, 0, 0, 1, 0], bool)
    pp = np.array([1, 0, 0, 1, 1, 0], bool)
    cnt = [(pp & yy).sum(), (pp & ~yy).sum(), (~pp & yy).sum(), (~pp & ~yy).sum()]
    assert vt.miou_from_counts(cnt) == pytest.approx(jaccard_score(yy, pp, average="macro"))
    Xn = Xs.copy()
    Xn[:, 3] = np.nan  # tokens without features (llava-next's newlines) are left out, not fatal
    assert vt.few_shot_segmentation(Xn, y, eps, test)["n_test_tokens"] == 20 * (T - 1)


# ---- input-agnostic keys --------------------------------------------------------------------------------------


def test_input_agnostic_rule_finds_a_constant_key_in_late_layers_only():
    rng = np.random.default_rng(3)
    keys = rng.normal(size=(30, 4, 6, 8))
    keys[:, 3, 2] = 5.0  # layer 4 (late), position 2: the same key for every image
    keys[:, 0, 1] = rng.normal(size=8)  # layer 1 (early), position 1: constant too, but not late
    keys[:, 2, 4] = 0.2 * rng.normal(size=(30, 8))  # layer 3, position 4: low variance but above the threshold
    ratio = vt.key_variance(keys)
    assert ratio.shape == (4, 6) and ratio[3, 2] == pytest.approx(0.0, abs=1e-12) and ratio[0, 1] < 1e-12
    assert 0.01 < ratio[2, 4] < 0.1 and 0.7 < np.median(ratio) < 1.3
    assert vt.input_agnostic(ratio, [1, 2, 3, 4], n_layers=4, threshold=0.01) == {4: [2]}
    assert vt.input_agnostic(ratio, [1, 2, 3, 4], n_layers=4, threshold=0.1) == {3: [4], 4: [2]}
    assert vt.input_agnostic(ratio, [1, 2, 3, 4], n_layers=4, threshold=0.01, late_from=0.0) == {1: [1], 4: [2]}
    with pytest.raises(ProbekitError, match="late_from"):
        vt.input_agnostic(ratio, [1, 2, 3, 4], n_layers=4, late_from=1.0)


# ---- the chapter on a tiny model ------------------------------------------------------------------------------------


def test_chapter_pipeline_end_to_end_and_cached(tiny_dirs, tmp_path):
    model = str(tiny_dirs["llava"])
    tr = vtc.run(model, n_per_class=3, cache_dir=tmp_path, seed=0)
    assert not tr.from_cache and tr.grid == (4, 4) and tr.layers == [1, 2, 3] and tr.late == [2, 3]
    assert set(tr.stores) == {(c, v) for c in tr.conditions for v in analysis.VIEWS}
    assert tr.masks.shape == (30, 16) and tr.causality["keys"] < 1e-5 and tr.causality["values"] < 1e-5
    # the rule: late layers (2, 3 of 3) only, ratio below the threshold; what it finds is what gets blocked
    assert tr.block_source == "rule" and tr.block == tr.agnostic and tr.agnostic  # this tiny model has some
    for i, l in enumerate(tr.layers):
        flagged = set(tr.agnostic.get(l, []))
        assert flagged == ({t for t in range(16) if tr.variance[i, t] < 0.1} if l in tr.late else set())
    assert tr.input_variance.shape == (16,)
    plain, prefix, blocked = (tr.stores[(c, "original")] for c in ("plain", "prefix", "blocked"))
    # neither the prefix nor the block reaches the vision encoder or the projector; the prefix changes the values
    # from block 2 on, the block (from layer 2) only after block 2
    np.testing.assert_array_equal(prefix.array("vision"), plain.array("vision"))
    np.testing.assert_allclose(prefix.array("hidden", 0), plain.array("hidden", 0), atol=1e-6)
    np.testing.assert_allclose(prefix.array("values", 0), plain.array("values", 0), atol=1e-5)
    assert np.abs(prefix.array("values", 1) - plain.array("values", 1)).max() > 1e-4
    np.testing.assert_allclose(blocked.array("values", 1), plain.array("values", 1), atol=1e-6)
    assert np.abs(blocked.array("values", 2) - plain.array("values", 2)).max() > 1e-5

    res = analysis.measure(tr, shots=3, episodes=2, n_boot=50)
    t = res.table
    assert set(t.task) == set(analysis.TASKS) and set(t.condition) == {"plain", "prefix", "blocked"}
    assert set(t[t.condition == "plain"].kind) == {"values", "keys", "hidden", "vision encoder", "projector"}
    assert not ((t.task == "text query") & (t.kind == "vision encoder")).any()  # no text side, no query
    assert t.score.between(0, 1).all() and (t.ci_low <= t.ci_high + 1e-12).all()
    per_kind = t[(t.condition == "plain") & (t.kind == "values") & (t.metric == "mIoU")]
    assert sorted(per_kind.layer) == [1, 2, 3]
    d = res.diff(("plain", "segmentation", "mIoU", "values", 1), ("plain", "segmentation", "mIoU", "projector", -1))
    assert d["ci"][0] <= d["diff"] <= d["ci"][1]
    # the prefix cannot change block 1's values: the measured difference there is exactly zero
    z = res.mean_diff("prefix", "plain", "segmentation", [1])
    assert z["diff"] == 0.0 and z["ci"] == [0.0, 0.0]
    assert analysis.affected_layers(tr, "prefix") == [2, 3] and analysis.affected_layers(tr, "blocked") == [3]

    rec = claims.record_payload(tr, res)
    rows = claims.status_rows(rec)
    # the record travels through the notebook as JSON with sorted keys: the rows must not change
    assert claims.status_rows(json.loads(json.dumps(rec, sort_keys=True, default=str))) == rows
    assert all(r.startswith("| (B) ") and r.count(" | ") == 4 for r in rows)
    words = [r.split(" | ")[3] for r in rows]
    assert set(words) <= {"reproduced", "not reproduced", "inconclusive", "—"}
    verdicts = claims.verdict_rows(rec)
    assert {"causality", "values_carry", "augments", "below_encoder", "artifacts", "prefix"} <= set(verdicts)
    assert verdicts["causality"]["verdict"] == "reproduced"  # causal attention: exactly unchanged
    assert sum(w != "—" for w in words) == len(verdicts)  # every judged claim has its row, the rest "—"
    para = claims.verdict_paragraph(rec)
    assert para.startswith(f"**Verdicts on `{model}`**") and all(v["claim"] in para for v in verdicts.values())
    assert all("**confirmed**" in r or "**secondary**" in r or "**unknown**" in r for r in rows)
    assert any("input-agnostic late-layer keys" in r for r in rows) and any("not run" in r for r in rows)
    assert all(r.split("|")[3].strip() == "not measured in this build" for r in claims.status_rows(None))
    for chart in (charts.perception_chart(tr, res), charts.conditions_chart(tr, res), charts.variance_chart(tr)):
        spec = chart.to_dict()
        assert spec["usermeta"]["caption"].startswith(f"Model: {model}") and "seed = 0" in spec["usermeta"]["caption"]
    assert "foreground" in charts.masks_html(tr) and len(claims.summary_table(tr, res)) == len(analysis.TASKS)
    assert "are input-agnostic" in claims.agnostic_note(tr) and "**prefix**" in claims.conditions_note(tr, res)

    # a second run re-uses every store: nothing is rewritten (a run without a model: below)
    mtimes = {p: p.stat().st_mtime_ns for p in Path(tmp_path).rglob("shard-*.safetensors")}
    again = vtc.run(model, n_per_class=3, cache_dir=tmp_path, seed=0, lm=tr.lm)
    assert again.from_cache and again.block == tr.block
    assert {p: p.stat().st_mtime_ns for p in Path(tmp_path).rglob("shard-*.safetensors")} == mtimes
    np.testing.assert_array_equal(again.stores[("plain", "flip")].array("values"),
                                  tr.stores[("plain", "flip")].array("values"))
    np.testing.assert_array_equal(again.queries["values"], tr.queries["values"])
    with pytest.raises(ProbekitError, match="not supported"):
        vtc.run(model, dataset="digits", cache_dir=tmp_path, lm=tr.lm)
    with pytest.raises(ProbekitError, match="shift=4 must be between 1 and 3"):
        vtc.run(model, n_per_class=3, cache_dir=tmp_path, lm=tr.lm, shift=4)
    with pytest.raises(ProbekitError, match="n_per_class"):
        vtc.run(model, n_per_class=1, cache_dir=tmp_path, lm=tr.lm)
    with pytest.raises(ProbekitError, match="shots=20"):
        analysis.measure(tr, shots=20)


def test_stand_ins_when_the_rule_finds_nothing_and_the_threshold_decides(tiny_dirs, tmp_path):
    """Below any ratio: nothing is input-agnostic, so the lowest-variance key of each late layer stands in
    (labelled); above every ratio: the rule flags every late position and exactly those are blocked."""
    model = str(tiny_dirs["llava"])
    none = vtc.run(model, n_per_class=2, cache_dir=tmp_path, prefix=None, agnostic_threshold=1e-9)
    assert none.agnostic == {} and none.block_source == "stand-in" and list(none.block) == [2, 3]
    for l, (t,) in none.block.items():
        assert none.variance[none.layers.index(l), t] == none.variance[none.layers.index(l)].min()
    assert "stand-ins" in claims.agnostic_note(none) and set(none.conditions) == {"plain", "blocked"}
    every = vtc.run(model, n_per_class=2, cache_dir=tmp_path, prefix=None, agnostic_threshold=10.0, lm=none.lm)
    assert every.block_source == "rule" and every.block == every.agnostic == {2: list(range(16)), 3: list(range(16))}
    off = vtc.run(model, n_per_class=2, cache_dir=tmp_path, prefix=None, agnostic_threshold=1e-9, block_fallback=0,
                  lm=none.lm)
    assert off.block == {} and off.block_source is None and set(off.conditions) == {"plain"}


def _refuse_models(monkeypatch):
    """Every way the chapter could build the model (or its processor) raises from here on."""
    import transformers

    import probekit.book.context
    import probekit.models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was asked for")

    monkeypatch.setattr(probekit.models, "load_model", refuse)
    monkeypatch.setattr(probekit.book.context, "load", refuse)
    for cls in (transformers.AutoProcessor, transformers.AutoTokenizer, transformers.LlavaForConditionalGeneration):
        monkeypatch.setattr(cls, "from_pretrained", refuse)


def _outputs(tr, res):
    """Everything the notebook shows of a run, as text, and its record."""
    rec = json.loads(json.dumps(claims.record_payload(tr, res)))
    tables = [claims.model_facts(tr), claims.causality_table(tr), claims.summary_table(tr, res)]
    notes = [claims.findings_note(tr, res), claims.agnostic_note(tr), claims.conditions_note(tr, res)]
    return rec, tables, notes + claims.status_rows(rec)


def test_a_rerun_on_complete_stores_loads_no_model(tiny_dirs, tmp_path, monkeypatch):
    """The first run extracts every store (loading the model once); the second finds them from the model's
    identity (config + weight hash) with every model loader refusing, and shows exactly the same; a store that
    goes missing is extracted again, and only it."""
    model = str(tiny_dirs["llava"])
    first = vtc.run(model, n_per_class=3, cache_dir=tmp_path, seed=0)
    assert first.lm is not None and not first.from_cache
    rec1, tables1, texts1 = _outputs(first, res1 := analysis.measure(first, shots=3, episodes=2, n_boot=50))
    q = first.query_store
    assert set(q.quantities) == {"keys", "values", "hidden"} and q.extra["causality"] == first.causality
    assert q.extra["image_size"] == [first.image_size] * 2 and q.extra["num_layers"] == 3

    with monkeypatch.context() as m:
        _refuse_models(m)
        again = vtc.run(model, n_per_class=3, cache_dir=tmp_path, seed=0)
        assert again.lm is None and again.from_cache
        res2 = analysis.measure(again, shots=3, episodes=2, n_boot=50)
        pd.testing.assert_frame_equal(res2.table, res1.table)
        rec2, tables2, texts2 = _outputs(again, res2)
        assert rec2 == rec1 and texts2 == texts1
        for a, b in zip(tables1, tables2):
            pd.testing.assert_frame_equal(a, b)
        for chart in (charts.perception_chart(again, res2), charts.conditions_chart(again, res2),
                      charts.variance_chart(again)):
            assert chart.to_dict()["usermeta"]["caption"].startswith(f"Model: {model}")
        assert charts.masks_html(again) == charts.masks_html(first)
        # another parameter that changes a store: it is missing, so the model is asked for
        with pytest.raises(AssertionError, match="the model was asked for"):
            vtc.run(model, n_per_class=3, cache_dir=tmp_path, seed=0, prompt="Describe the image.")

    # a missing store (here: blocked, shifted view) is extracted again; the others are not rewritten
    gone = again.stores[("blocked", "shift")].root
    shutil.rmtree(gone)
    mtimes = {p: p.stat().st_mtime_ns for p in Path(tmp_path).rglob("shard-*.safetensors")}
    third = vtc.run(model, n_per_class=3, cache_dir=tmp_path, seed=0)
    assert third.lm is not None and not third.from_cache and (gone / "shard-00000.safetensors").is_file()
    assert {p: p.stat().st_mtime_ns for p in Path(tmp_path).rglob("shard-*.safetensors") if p.parent != gone} == mtimes
    assert _outputs(third, analysis.measure(third, shots=3, episodes=2, n_boot=50))[0] == rec1


# ---- the notebook -------------------------------------------------------------------------------------------------


def test_default_parameters():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    ns = {}
    exec(next(c for c in nb.cells if "parameters" in c.metadata.get("tags", [])).source, ns)
    assert ns["model_id"] == "llava-organism" and ns["dataset"] == "fashion-mnist"


@pytest.mark.slow
def test_notebook_papermill_then_nbval(tiny_dirs, tmp_path):
    model = str(tiny_dirs["qwen2_vl"])  # a re-run with another class than the default's
    out = run_papermill("05_visual_tokens", tmp_path, {"model_id": model, "n_per_class": 3, "shots": 3,
                                                             "cache_dir": str(tmp_path / "cache"), "seed": 0})
    nb = nbformat.read(out, as_version=4)
    html = "\n".join(outputs(nb, "text/html"))
    assert html.count("altair-viz-") >= 3 and f"Model: {model}" in html and "seed = 0" in html
    rec = next(outputs(nb, RECORD))
    assert rec["name"] == claims.RECORD_NAME and rec["grid"] == [2, 2] and rec["blocks"] == 3
    assert_nbval(out)


def _shown(nb) -> list[str]:
    """The notebook's tables and texts as rendered (altair's random element ids aside)."""
    return [re.sub(r"altair-viz-[0-9a-f]+", "altair-viz-X", t) for mime in ("text/html", "text/markdown", "text/plain")
            for t in outputs(nb, mime)]


@pytest.mark.slow
def test_notebook_twice_the_second_time_without_a_loadable_model(tiny_dirs, tmp_path):
    """The notebook on a model directory; then everything that building the model needs beyond its identity is
    deleted (tokenizer, processor, chat template: only config.json, which names the architecture, and the weight
    files, whose hash is the identity, remain), so the model cannot be loaded; the second run shows the same."""
    from probekit.models import load_model

    model = tmp_path / "model"
    shutil.copytree(tiny_dirs["llava"], model)
    params = {"model_id": str(model), "n_per_class": 3, "shots": 3, "cache_dir": str(tmp_path / "cache"), "seed": 0}
    (tmp_path / "1").mkdir()
    (tmp_path / "2").mkdir()
    first = nbformat.read(run_papermill("05_visual_tokens", tmp_path / "1", params), as_version=4)
    for f in model.iterdir():
        if f.name != "config.json" and f.suffix != ".safetensors":
            f.unlink()
    with pytest.raises(ModelLoadError):
        load_model(str(model), dtype="float32", device="cpu")
    second = nbformat.read(run_papermill("05_visual_tokens", tmp_path / "2", params), as_version=4)
    assert next(outputs(second, RECORD)) == next(outputs(first, RECORD))
    assert _shown(second) == _shown(first)
