import pytest

from probekit.errors import ProbekitError
from probekit.params import check_params

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
