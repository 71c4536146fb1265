"""The training loop's step-aligned garbage collection (launcher/train/loop.py), on the real interpreter's collector."""
from __future__ import annotations

import gc

import pytest

from launcher.train.loop import FULL_GC_EVERY, step_aligned_gc


def young_collections() -> int:
    return gc.get_stats()[1]["collections"]


def full_collections() -> int:
    return gc.get_stats()[2]["collections"]


def test_collector_is_off_while_training_and_runs_every_nth_step():
    assert gc.isenabled()
    with step_aligned_gc(3) as collect:
        assert not gc.isenabled()
        ran = []
        for step in range(1, 8):
            before = young_collections()
            collect(step)
            ran.append(young_collections() > before)
    assert ran == [False, False, True, False, False, True, False]
    assert gc.isenabled()


def test_every_so_often_the_collection_is_a_full_one():
    with step_aligned_gc(2) as collect:
        before = full_collections()
        for step in range(1, 2 * FULL_GC_EVERY):
            collect(step)
        assert full_collections() == before
        collect(2 * FULL_GC_EVERY)
        assert full_collections() == before + 1


def test_collector_comes_back_when_training_raises():
    with pytest.raises(RuntimeError):
        with step_aligned_gc(5):
            raise RuntimeError("a rank failed")
    assert gc.isenabled()


def test_zero_leaves_pythons_collector_alone():
    with step_aligned_gc(0) as collect:
        assert gc.isenabled()
        before = young_collections()
        collect(10)
        assert young_collections() == before
    assert gc.isenabled()


def test_a_collector_the_user_turned_off_stays_off():
    gc.disable()
    try:
        with step_aligned_gc(2) as collect:
            collect(2)
        assert not gc.isenabled()
    finally:
        gc.enable()
