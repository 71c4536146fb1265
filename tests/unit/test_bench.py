"""bench/perf.py reads the ranks' checkpoint timing lines and times steps between their ends: the pure parts."""
from __future__ import annotations

from bench.perf import LOADED, SAVED, step_times_from_ends
from launcher.train.saver import throughput


def test_bench_reads_the_save_and_load_lines_the_ranks_write():
    line = throughput({"files": {"a": 6_000_000_000, "b": 2_000_000_000}}, 4.0)
    assert line == "in 4.0 s (8.00 GB, 2.00 GB/s)"
    assert SAVED.search(f"saved checkpoint /runs/x/checkpoints/global_step25 {line}").groups() == ("4.0", "8.00", "2.00")
    assert LOADED.search(f"resumed from global step 25 (/runs/x); loaded {line}").groups() == ("4.0", "8.00", "2.00")


def test_a_step_lasts_from_the_end_of_the_previous_one():
    assert step_times_from_ends(10.0, [10.5, 11.25, 12.0]) == [0.5, 0.75, 0.75]


def test_a_variant_is_a_name_and_launcher_overrides_or_a_usage_error():
    import argparse

    import pytest

    from bench.perf import variant

    assert variant("z3c=+plan=zero3 plan.compile=torch") == ("z3c", "+plan=zero3 plan.compile=torch")
    for bad in ("nope", "a b=+plan=zero3", "z3="):
        with pytest.raises(argparse.ArgumentTypeError, match="give NAME=OVERRIDES"):
            variant(bad)
