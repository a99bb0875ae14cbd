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
