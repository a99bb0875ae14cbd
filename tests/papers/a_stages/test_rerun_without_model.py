"""Paper A's chapters re-run on a complete store without loading the model, with the same outputs."""

import pandas as pd
import pytest

import probekit.book.context as context
import probekit.models as models
from probekit.data import two_domain_dataset
from probekit.papers.a_stages import analysis, chapter, claims, intervals
from probekit.prompts import decision_variants


def _outputs(run):
    res = analysis.probe(run, n_boot=50)
    seg = intervals.segment_intervals(res, n_boot=50, seed=0)  # as chapter 2 does
    evidence = claims.stage_evidence(seg, run.blocks)
    return {"facts": chapter.model_facts(run), "prompts": chapter.prompts_html(run), "probe": res.drop(columns=[]),
            "record": claims.stage_record(run, res, seg, evidence), "answers": analysis.answer_summary(run.store)}


def test_chapters_1_to_3_rerun_from_the_store_with_the_model_unavailable(tiny_dirs, tmp_path, monkeypatch):
    model = str(tiny_dirs["qwen2_vl"])
    first = chapter.run(model, n_per_class=3, cache_dir=tmp_path, seed=0)
    assert first.lm is not None  # the first run had to extract
    data = two_domain_dataset("fashion-mnist", None, 3, 0)
    dec_first = chapter.run(model, n_per_class=3, cache_dir=tmp_path, seed=0, data=data,
                            variants=decision_variants(data.concept, data.negation))
    want, want_dec = _outputs(first), analysis.decision_format(dec_first, n_boot=50).table

    def unavailable(*a, **k):
        raise models.ModelLoadError("the model is unavailable in this test")

    monkeypatch.setattr(models, "load_model", unavailable)
    monkeypatch.setattr(context, "load", unavailable)
    again = chapter.run(model, n_per_class=3, cache_dir=tmp_path, seed=0)
    dec_again = chapter.run(model, n_per_class=3, cache_dir=tmp_path, seed=0, data=data,
                            variants=decision_variants(data.concept, data.negation))
    assert again.lm is None and dec_again.lm is None
    got = _outputs(again)
    pd.testing.assert_frame_equal(got["facts"], want["facts"])
    pd.testing.assert_frame_equal(got["probe"], want["probe"])
    pd.testing.assert_frame_equal(got["answers"], want["answers"])
    assert got["prompts"] == want["prompts"] and got["record"] == want["record"]
    assert "probed token: <code>'?'</code>" not in got["prompts"]  # the probed tokens came from the store
    pd.testing.assert_frame_equal(analysis.decision_format(dec_again, n_boot=50).table, want_dec)
    with pytest.raises(models.ModelLoadError, match="unavailable"):  # a store that is missing still needs the model
        chapter.run(model, n_per_class=2, cache_dir=tmp_path, seed=0)
