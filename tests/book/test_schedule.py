"""The book's chapter scheduler: two chapters at once, each after the chapters whose activations it reads."""

from __future__ import annotations

import threading

import pytest

from probekit.book.build import AFTER, CHAPTERS, run_chapters


def test_independent_chapters_overlap_and_readers_wait_for_chapter_one():
    started_05 = threading.Event()
    log, lock = [], threading.Lock()

    def execute(name, threads):
        with lock:
            log.append(("start", name, threads))
        if name == CHAPTERS[4]:
            started_05.set()
        if name == CHAPTERS[0]:  # chapter 1 finishes only once chapter 5 runs beside it
            assert started_05.wait(30), "chapter 5 did not start while chapter 1 ran"
        with lock:
            log.append(("end", name, threads))

    order = run_chapters(list(CHAPTERS), execute, jobs=2)
    assert sorted(order) == sorted(CHAPTERS) and order[:2] == [CHAPTERS[0], CHAPTERS[4]]
    assert {t for _, _, t in log} == {1}
    end_01 = log.index(("end", CHAPTERS[0], 1))
    for reader in AFTER:
        assert log.index(("start", reader, 1)) > end_01, reader


def test_one_job_runs_in_order_with_default_threads():
    seen = []
    assert run_chapters(list(CHAPTERS), lambda n, t: seen.append((n, t)), jobs=1) == list(CHAPTERS)
    assert seen == [(n, None) for n in CHAPTERS]


def test_a_failure_is_raised_and_nothing_starts_after_it():
    seen = []

    def execute(name, threads):
        seen.append(name)
        if name == CHAPTERS[0]:
            raise RuntimeError("chapter 1 broke")

    with pytest.raises(RuntimeError, match="chapter 1 broke"):
        run_chapters(list(CHAPTERS), execute, jobs=2)
    assert not set(seen) & set(AFTER)  # no reader of chapter 1's store started


def test_a_subset_without_chapter_one_does_not_wait_for_it():
    assert run_chapters([CHAPTERS[1], CHAPTERS[5]], lambda n, t: None, jobs=2) == [CHAPTERS[1], CHAPTERS[5]]


def test_chapter_four_waits_for_its_stores_step_which_runs_beside_chapter_one():
    from probekit.book.build import STORES

    log, lock, beside = [], threading.Lock(), threading.Event()

    def execute(name, threads):
        with lock:
            log.append(("start", name))
        if name == STORES:
            beside.set()
        if name == CHAPTERS[0]:
            assert beside.wait(30), "the stores step did not start while chapter 1 ran"
        with lock:
            log.append(("end", name))

    steps = [CHAPTERS[0], STORES, *CHAPTERS[1:]]
    order = run_chapters(steps, execute, jobs=2)
    assert order[:2] == [CHAPTERS[0], STORES]
    start_04 = log.index(("start", CHAPTERS[3]))
    assert start_04 > log.index(("end", STORES)) and start_04 > log.index(("end", CHAPTERS[0]))


@pytest.mark.parametrize("model_id", [None, "some/other-model"])
def test_the_book_extracts_chapter_four_stores_but_chapter_one_s_model(monkeypatch, tmp_path, model_id):
    import probekit.book.build as build

    calls = []
    monkeypatch.setattr(build, "execute_chapter", lambda name, root, out, params, **kw: calls.append((name, params)))
    monkeypatch.setattr(build, "extract_stores", lambda root, params, skip, **kw: calls.append(("stores", params, skip)))
    monkeypatch.setattr(build, "write_status_page", lambda out: None)
    monkeypatch.setattr(build, "write_organisms_page", lambda out: None)
    build.build_book(out_dir=tmp_path, html=False, model_id=model_id, model_ids="a,b", cache_dir=tmp_path / "c",
                     log=lambda *a: None)
    (stores,) = [c for c in calls if c[0] == "stores"]
    assert stores[2] == [model_id or "smol-llava-ft"]  # chapter 1's model: its store comes from chapter 1
    assert stores[1] == dict(calls[[c[0] for c in calls].index(CHAPTERS[3])][1])  # chapter 4's own parameters
    assert stores[1]["model_ids"] == ["a", "b"] and stores[1]["cache_dir"] == str((tmp_path / "c").resolve())
    assert {c[0] for c in calls} == {*CHAPTERS, "stores"}


def test_the_stores_step_reads_chapter_four_defaults_under_the_overrides():
    from probekit.book.build import find_root
    from probekit.book.prefetch import comparison_arguments, notebook_defaults

    root = find_root()
    nb = notebook_defaults(root / "notebooks" / f"{CHAPTERS[3]}.ipynb")
    args = comparison_arguments(root, {"n_per_class": 7, "drop": 0.2, "model_ids": "x,y"})
    assert args["n_per_class"] == 7 and args["model_ids"] == "x,y"
    assert "drop" not in args and "n_boot" not in args  # analysis parameters: not the stores' business
    assert args["dtype"] == nb["dtype"] and args["contrast_dataset"] == nb["contrast_dataset"]
    assert set(args) == {"model_ids", "dataset", "data_root", "contrast_dataset", "n_per_class", "variants", "device",
                         "dtype", "cache_dir", "seed"}


def test_the_stores_step_writes_the_stores_chapter_four_then_reads_without_a_model(tiny_dirs, tmp_path):
    from probekit.book.build import extract_stores, find_root
    from probekit.book.prefetch import comparison_arguments
    from probekit.papers.a_stages.chapter import book_runs

    root = find_root()
    params = {"model_ids": [str(tiny_dirs["llava"]), str(tiny_dirs["qwen2_vl"])], "n_per_class": 1,
              "cache_dir": str(tmp_path / "cache")}
    extract_stores(root, params, skip=[str(tiny_dirs["qwen2_vl"])], log=lambda *a: None)
    runs = book_runs(**comparison_arguments(root, params))
    assert runs[str(tiny_dirs["llava"])].lm is None  # found complete: no model loaded, nothing extracted
    assert runs[str(tiny_dirs["qwen2_vl"])].lm is not None  # skipped by the step, so extracted here


def test_a_failing_stores_step_names_itself(tmp_path):
    from probekit.book.build import extract_stores, find_root
    from probekit.errors import ProbekitError

    with pytest.raises(ProbekitError, match="chapter 4's stores ahead of it failed"):
        extract_stores(find_root(), {"model_ids": [str(tmp_path / "no-such-model")], "n_per_class": 1,
                                     "cache_dir": str(tmp_path / "c")}, skip=[], log=lambda *a: None)


def test_the_default_cache_reaches_the_chapters_as_a_path_relative_to_the_book_root(monkeypatch, tmp_path):
    """Kernels run in the book root, so a relative cache_dir works there, and no rendered page (the injected
    parameters cell, chapter 5's and 6's store rows) shows this machine's absolute paths."""
    import probekit.book.build as build

    seen = {}
    monkeypatch.setattr(build, "execute_chapter", lambda name, root, out, params, **kw: seen.setdefault(name, params))
    monkeypatch.setattr(build, "extract_stores", lambda root, params, skip, **kw: seen.setdefault("stores", params))
    monkeypatch.setattr(build, "write_status_page", lambda out: None)
    monkeypatch.setattr(build, "write_organisms_page", lambda out: None)
    build.build_book(out_dir=tmp_path, html=False, log=lambda *a: None)
    assert {p["cache_dir"] for p in seen.values()} == {".cache/probekit"}
