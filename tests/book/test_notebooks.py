"""The chapter notebooks: papermill runs each with small parameters on tiny random-weight models saved to
disk (a re-run with models other than the default), then nbval re-executes the executed notebook in a fresh
kernel and compares every output — the tables and charts that carry results included — with altair's random
div ids sanitized (tests/nbval_sanitize.cfg)."""

import nbformat
import pytest
from notebook_tools import NOTEBOOKS, RECORD, assert_nbval, outputs, run_papermill

CHAPTERS = ("01_setup", "02_four_stages", "03_decision_vs_format", "04_architecture_comparison")
# 05_visual_tokens and 06_visual_layer_selection have their own tests (tests/papers/test_b_visual_tokens.py,
# tests/papers/test_c_layer_selection.py: papermill + nbval); every chapter's parameters cell is checked here
BOOK_CHAPTERS = tuple(p.stem for p in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")))
REQUIRED = ("model_id", "dataset", "data_root", "n_per_class", "variants", "device", "dtype", "cache_dir", "seed")

pytestmark = pytest.mark.slow


def small_params(name, tiny_dirs, cache):
    p = {"n_per_class": 3, "cache_dir": str(cache), "seed": 0}
    if name == "04_architecture_comparison":
        p["model_ids"] = [str(tiny_dirs["llava"]), str(tiny_dirs["qwen2_vl"])]
    else:
        p["model_id"] = str(tiny_dirs["llava"])
    return p


@pytest.fixture(scope="module")
def executed(tiny_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("nb")
    cache = tmp_path_factory.mktemp("cache")
    return {n: run_papermill(n, out, small_params(n, tiny_dirs, cache)) for n in CHAPTERS}


@pytest.mark.parametrize("name", BOOK_CHAPTERS)
def test_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1
    ns = {}
    exec(cells[0].source, ns)
    want = [k if not (name.startswith("04") and k == "model_id") else "model_ids" for k in REQUIRED]
    if name not in CHAPTERS:  # papers B and C: no prompt variants
        want.remove("variants")
    assert not set(want) - set(ns), f"{name} lacks parameters {set(want) - set(ns)}"
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "source notebooks hold no outputs"


@pytest.mark.parametrize("name", CHAPTERS)
def test_nbval(executed, name):
    """nbval re-executes the papermill output and compares every output (sanitized ids)."""
    assert_nbval(executed[name])


def test_results_carried_by_outputs(executed, tiny_dirs):
    nb2 = nbformat.read(executed["02_four_stages"], as_version=4)
    html = "\n".join(outputs(nb2, "text/html"))
    assert "first_layer" in html and "visual grounding" in html  # the boundary table
    assert html.count("altair-viz-") >= 3  # accuracy, sensitivity, explorer charts
    assert "Model: " + str(tiny_dirs["llava"]) in html and "seed = 0" in html  # captions
    rec = next(r for r in outputs(nb2, RECORD) if r["name"] == "four_stages")
    assert rec["model"] == str(tiny_dirs["llava"]) and rec["n_images"] == 60  # fashion + held-out digits
    assert 0 < rec["n_test"] < 30  # the probes' held-out share of the 30 concept images
    assert set(rec["stages"]) == {"visual grounding", "lexical integration", "semantic reasoning", "answer decoding"}
    nb3 = nbformat.read(executed["03_decision_vs_format"], as_version=4)
    html3 = "\n".join(outputs(nb3, "text/html"))
    assert "shared (certain)" in html3 and "formats part (certain)" in html3  # the per-layer table (paired bands)
    assert '"train_format"' in html3 and "Model: " + str(tiny_dirs["llava"]) in html3  # the transfer chart
    nb4 = nbformat.read(executed["04_architecture_comparison"], as_version=4)
    rec4 = next(r for r in outputs(nb4, RECORD) if r["name"] == "comparison")
    assert set(rec4["models"]) == {str(tiny_dirs["llava"]), str(tiny_dirs["qwen2_vl"])}


def test_rerun_with_another_model_class(tiny_dirs, tmp_path):
    """`papermill notebooks/02_four_stages.ipynb out.ipynb -p model_id <path>` with another class."""
    out = run_papermill("02_four_stages", tmp_path, {"model_id": str(tiny_dirs["qwen2_vl"]), "n_per_class": 3,
                                                     "cache_dir": str(tmp_path / "cache")})
    nb = nbformat.read(out, as_version=4)
    rec = next(r for r in outputs(nb, RECORD) if r["name"] == "four_stages")
    assert rec["model"] == str(tiny_dirs["qwen2_vl"])
    assert rec["blocks"] == 3
