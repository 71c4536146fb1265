"""How the validation set is spread over data-parallel ranks, and when it is scored (launcher/train/evaluate.py)."""
from __future__ import annotations

import dataclasses

import pytest

from launcher.data.formats import IGNORE_INDEX, Example
from launcher.data.selection import DataSet
from launcher.data.sources import DataSource
from launcher.train.evaluate import eval_due, rank_batches
from tests.unit.test_plan import plan_for


def rows(n: int) -> list[Example]:
    return [Example(input_ids=[10 + i, 11 + i, 12 + i], labels=[IGNORE_INDEX, 11 + i, 12 + i]) for i in range(n)]


@pytest.mark.parametrize("n, dp, micro", [(48, 1, 2), (48, 2, 2), (47, 4, 2), (5, 4, 3), (1, 2, 2)])
def test_every_row_is_scored_once_and_every_rank_runs_the_same_forwards(n, dp, micro):
    examples = rows(n)
    shards = [rank_batches(examples, rank, dp, micro, pad_id=0) for rank in range(dp)]
    assert len({len(batches) for batches in shards}) == 1  # ZeRO-3 and tp need each other's every forward
    assert all(len(batch) == micro for batches in shards for batch in batches)
    real = sorted(id(r) for batches in shards for batch in batches for r in batch if r.num_targets)
    assert real == sorted(id(r) for r in examples)
    fillers = [r for batches in shards for batch in batches for r in batch if not r.num_targets]
    assert all(r.input_ids == [0] and r.labels == [IGNORE_INDEX] for r in fillers)


def test_the_validation_set_is_scored_every_n_steps_and_after_the_last_only_when_there_is_one():
    plan = plan_for("train.max_steps=20", "train.eval_every=5")
    assert not any(eval_due(step, plan) for step in range(1, 21))  # no validation set in this plan
    source = DataSource("set", path="/data/set.json")
    held = dataclasses.replace(plan, train_sets=(DataSet(source, rows=100, val_rows=10, samples=90),))
    assert [s for s in range(1, 21) if eval_due(s, held)] == [5, 10, 15, 20]
    at_end = dataclasses.replace(held, train=dataclasses.replace(held.train, eval_every=0))
    assert [s for s in range(1, 21) if eval_due(s, at_end)] == [20]
    separate = dataclasses.replace(at_end, train_sets=(DataSet(source, rows=100, samples=100),),
                                   eval_sets=(DataSet(source, rows=30),))
    assert [s for s in range(1, 21) if eval_due(s, separate)] == [20]
