import pytest

from probekit.book.params import check_params
from probekit.errors import ProbekitError

GOOD = {"model_id": "llava-organism", "dataset": "fashion-mnist", "data_root": None, "n_per_class": 5,
        "variants": "paper-a", "device": "cpu", "dtype": "float32", "cache_dir": None, "seed": 0}


def test_good_parameters_pass_unchanged():
    assert check_params(GOOD) == GOOD
    assert check_params({**GOOD, "variants": ["lexical", "output_format"]})["variants"] == ["lexical", "output_format"]


@pytest.mark.parametrize("change, words", [
    ({"n_per_class": "5"}, ["n_per_class='5'", "str", "positive integer"]),
    ({"n_per_class": 0}, ["n_per_class=0", "at least 1"]),
    ({"seed": 1.5}, ["seed=1.5", "integer"]),
    ({"seed": True}, ["seed=True"]),
    ({"dataset": "imagenet"}, ["dataset='imagenet'", "fashion-mnist"]),
    ({"variants": ["lexcal"]}, ["unknown variant family 'lexcal'"]),
    ({"variants": "nope.yaml"}, ["'nope.yaml' not found"]),
    ({"dtype": "fp16"}, ["dtype='fp16'", "bfloat16"]),
    ({"model_ids": []}, ["model_ids=[]"]),
])
def test_bad_parameters_name_the_parameter_and_the_fix(change, words):
    with pytest.raises(ProbekitError) as e:
        check_params({**GOOD, **change})
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("name, value, words", [
    ("n_per_class", 0, "n_per_class=0 must be at least 1"),
    ("dataset", "imagenet", "dataset='imagenet' is unknown"),
    ("variants", ["lexcal"], "unknown variant family 'lexcal'"),
    ("n_per_class", "ten", "n_per_class='ten' (str) must be"),
])
def test_bad_papermill_parameters_stop_the_notebook_with_the_message(name, value, words, tmp_path):
    """As a user would: papermill -p with a bad value stops before any model is loaded or file written."""
    from pathlib import Path

    import papermill as pm

    nb = Path(__file__).resolve().parents[2] / "notebooks" / "02_four_stages.ipynb"
    cache = tmp_path / "cache"
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(nb), str(tmp_path / "out.ipynb"), parameters={name: value, "cache_dir": str(cache)},
                            kernel_name="python3", progress_bar=False, cwd=str(tmp_path))
    assert e.value.ename in ("ProbekitError", "PromptError", "DataError") and words in e.value.evalue
    assert not cache.exists()  # nothing half-written
