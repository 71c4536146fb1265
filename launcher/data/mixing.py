"""Several data sets as one: how many samples each contributes per epoch, which rows, and the validation split.

Pure and deterministic (numpy generators seeded from the run's seed and the set's index), so every rank and every
rerun with the same seed picks the same rows without exchanging them.
"""
from __future__ import annotations

import math

import numpy as np

from launcher.errors import LauncherError

_MIX_STREAM, _SPLIT_STREAM = 0, 1  # the same seed draws unrelated rows for mixing and for the validation split


def check_mix(names: list[str], weights: list[float]) -> None:
    """Weights are optional; given, there is one per data set and each is a positive number."""
    if not weights:
        return
    if len(weights) != len(names):
        raise LauncherError("data.weights", list(weights), f"give one weight per data set, in the same order: "
                            f"{len(names)} data sets ({', '.join(names)}), or no weights to concatenate them",
                            problem=f"there are {len(weights)} weights for {len(names)} data sets")
    bad = [w for w in weights if not (isinstance(w, (int, float)) and math.isfinite(w) and w > 0)]
    if bad:
        raise LauncherError("data.weights", list(weights), "each weight must be a number > 0: a set's share of "
                            "the samples, e.g. [0.7, 0.3] or [2, 1]", problem=f"{bad[0]!r} is not")


def mix_counts(sizes: list[int], weights: list[float]) -> list[int]:
    """Samples each set contributes per epoch. Without weights, every row once; with weights the epoch keeps the
    total row count, shared by the normalised weights (largest remainder, so the counts add up), at least 1 each.
    Sizes are each >= 1: read_rows refuses an empty data set."""
    if not weights:
        return list(sizes)
    if min(sizes, default=1) < 1:
        raise ValueError(f"mix_counts: sizes {sizes} hold an empty set; refuse empty sets before mixing them")
    total = sum(sizes)
    counts = _largest_remainder(total, [float(w) for w in weights])
    for i, count in enumerate(counts):
        if count == 0:  # a tiny weight still contributes; the largest share gives the row up
            counts[counts.index(max(counts))] -= 1
            counts[i] = 1
    return counts


def _largest_remainder(total: int, shares: list[float]) -> list[int]:
    """round(share_i / sum * total) for each i, adjusted so the results sum to total (ties: the earlier set)."""
    quotas = [s / sum(shares) * total for s in shares]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda i: (counts[i] - quotas[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**64, index, stream])


def mixed_order(sizes: list[int], weights: list[float], seed: int) -> list[tuple[int, int]]:
    """(set index, row index) pairs of one epoch's pool, set by set. With weights, set i's rows come from seeded
    permutations of its rows: cut when it contributes fewer than it has, a fresh permutation per extra pass when
    it contributes more. Without weights, every row once in file order. The sampler shuffles the pool later."""
    if not weights:
        return [(i, row) for i, size in enumerate(sizes) for row in range(size)]
    pool: list[tuple[int, int]] = []
    for i, (size, count) in enumerate(zip(sizes, mix_counts(sizes, weights))):
        rng = _rng(seed, i, _MIX_STREAM)
        passes = [rng.permutation(size) for _ in range(math.ceil(count / size))]
        pool += [(i, int(row)) for row in np.concatenate(passes)[:count]]
    return pool


def split_validation(sizes: list[int], val_size: float, seed: int) -> list[tuple[list[int], list[int]]]:
    """Per set, (training row indices, validation row indices), both sorted. val_size < 1 is a fraction of each
    set (at least one row from a set of two or more); val_size >= 1 is a row count spread over the sets in
    proportion to their sizes. Rows are picked by a seeded permutation, so reruns hold out the same rows."""
    counts = _validation_counts(sizes, val_size)
    for i, (size, count) in enumerate(zip(sizes, counts)):
        if count >= size:
            raise _val_error(val_size, f"it leaves data set #{i + 1} ({size} rows) with no training row "
                                       f"({count} would be held out)")
    split = []
    for i, (size, count) in enumerate(zip(sizes, counts)):
        order = _rng(seed, i, _SPLIT_STREAM).permutation(size)
        split.append((sorted(int(r) for r in order[count:]), sorted(int(r) for r in order[:count])))
    return split


def _validation_counts(sizes: list[int], val_size: float) -> list[int]:
    if not val_size > 0:
        raise _val_error(val_size, "it must be > 0 to hold rows out")
    if val_size < 1:
        return [max(1, math.floor(val_size * size + 0.5)) if size >= 2 else 0 for size in sizes]
    if not float(val_size).is_integer():
        raise _val_error(val_size, "a value of 1 or more is a row count and must be a whole number")
    total, count = sum(sizes), int(val_size)
    if count >= total:
        raise _val_error(val_size, f"it asks for {count} validation rows but the training sets hold {total} rows")
    return _largest_remainder(count, [float(s) for s in sizes])


def _val_error(val_size: float, problem: str) -> LauncherError:
    return LauncherError("data.val_size", val_size, "give a fraction in (0, 1) of each data set, e.g. 0.05, or a "
                         "whole number of rows >= 1 that leaves every set training rows, e.g. 200", problem=problem)
