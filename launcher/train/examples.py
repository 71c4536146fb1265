"""A rank's training and validation examples: every data set of the plan read and split as the launching host did
(data/selection.py), tokenized (from the cache when an earlier launch left it there), mixed by data.weights,
packed when asked. The same on every rank, so the sampler (batching.py) needs nothing but the seed.
"""
from __future__ import annotations

from typing import Any

from launcher.data.cache import cache_path, cached_examples
from launcher.data.formats import Conversation
from launcher.data.mixing import mixed_order
from launcher.data.selection import load_set, set_conversations
from launcher.data.sources import fingerprint
from launcher.data.tokenization import build_examples
from launcher.plan.types import Plan


def load_examples(plan: Plan, tokenizer: Any, local_rank: int, env: dict[str, str]) -> tuple[list[Any], list[Any]]:
    """(training examples in pool order, validation examples). One rank per host writes the cache."""
    from launcher.train.batching import pack_examples

    read: dict[int, tuple[list[Conversation], list[Conversation]]] = {}

    def split(index: int) -> tuple[list[Conversation], list[Conversation]]:
        if index not in read:
            d = plan.data
            read[index] = set_conversations(plan.train_sets, index, d.val_size, plan.train.seed, d.max_samples)
        return read[index]

    def tokenized(part: str, index: int) -> list[Any]:
        def conversations() -> list[Conversation]:
            if part == "eval":
                return load_set(plan.eval_sets[index].source, plan.data.max_samples)[0]
            return split(index)[0 if part == "train" else 1]

        def build() -> tuple[list[Any], int]:
            rows = conversations()
            sets = plan.eval_sets if part == "eval" else plan.train_sets
            where = sets[index].source.name + (" (validation rows)" if part == "val" else "")
            return build_examples(tokenizer, rows, plan.train.seq_len, where=where), len(rows)

        path = cache_path(env, cache_inputs(plan, part, index), plan.train.seq_len, tokenizer) \
            if plan.data.cache else None
        return cached_examples(path, build, write=local_rank == 0, seq_len=plan.train.seq_len)

    per_set = [tokenized("train", i) for i in range(len(plan.train_sets))]
    evals = [e for i, s in enumerate(plan.train_sets) if s.val_rows for e in tokenized("val", i)]
    evals += [e for i in range(len(plan.eval_sets)) for e in tokenized("eval", i)]
    order = mixed_order([len(examples) for examples in per_set], list(plan.data.weights), plan.train.seed)
    train = [per_set[s][r] for s, r in order]
    return (pack_examples(train, plan.train.seq_len) if plan.data.packing else train), evals


def cache_inputs(plan: Plan, part: str, index: int) -> dict[str, Any]:
    """Everything that shapes one part of one set (the cache key, with seq_len and the tokenizer): the set's files
    (path, size, mtime) and mapping, data.max_samples, and for a split, the seed, data.val_size and every set's
    size (a split by row count spreads over all sets). A file missing on this host is refused here, by name."""
    sets = plan.eval_sets if part == "eval" else plan.train_sets
    source = sets[index].source
    inputs: dict[str, Any] = {"part": part, "source": source.to_dict(), "files": fingerprint(source),
                              "max_samples": plan.data.max_samples}
    if part != "eval" and plan.data.val_size:
        inputs.update(val_size=plan.data.val_size, seed=plan.train.seed, index=index,
                      rows=[s.rows for s in plan.train_sets])
    return inputs
