"""Which examples each rank trains on at each step, packed and padded into tensors.

The sample order is a function of (seed, global step) only: a resumed run continues exactly where it stopped, and
the global batch at every step holds the same samples whatever the number of ranks or the accumulation.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from launcher.errors import LauncherError
from launcher.data.formats import IGNORE_INDEX, Example


@dataclass(frozen=True)
class PackedExample:
    """Whole examples laid end to end; position_ids restart at 0 for each one, seq_lens says where they end."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]
    seq_lens: list[int]

    @cached_property
    def num_targets(self) -> int:
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def _pack(examples: list[Example]) -> PackedExample:
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for example in examples:
        input_ids += example.input_ids
        # A document's first token is never predicted from the previous document.
        labels += [IGNORE_INDEX] + example.labels[1:]
        position_ids += range(len(example.input_ids))
    return PackedExample(input_ids, labels, position_ids, [len(example.input_ids) for example in examples])


def pack_examples(examples: Sequence[Example], seq_len: int) -> list[PackedExample]:
    """Fill rows of at most seq_len tokens with whole examples, in order (no example is split across rows)."""
    rows: list[PackedExample] = []
    current: list[Example] = []
    used = 0
    for example in examples:
        length = len(example.input_ids)
        if length > seq_len:
            raise ValueError(f"example of {length} tokens is longer than seq_len={seq_len}; tokenize with seq_len")
        if current and used + length > seq_len:
            rows.append(_pack(current))
            current, used = [], 0
        current.append(example)
        used += length
    if current:
        rows.append(_pack(current))
    return rows


@lru_cache(maxsize=2)
def epoch_permutation(num_samples: int, seed: int) -> torch.Tensor:
    """torch.randperm(num_samples) under this seed, drawn once per epoch: for a 52k-example set the draw and its
    conversion to a list cost ~8 ms of host time, and every step asks once per micro batch while its GPU waits. Kept
    as a tensor (8 bytes a sample; Python ints would take ~36), two of them: a global batch can straddle two
    epochs. Callers only slice it."""
    return torch.randperm(num_samples, generator=torch.Generator().manual_seed(seed))


def sample_stream_indices(num_samples: int, seed: int, start: int, count: int) -> list[int]:
    """stream[start:start+count] of the endless stream: epoch e is torch.randperm(num_samples) seeded with seed + e."""
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    out: list[int] = []
    position = start
    while len(out) < count:
        epoch, offset = divmod(position, num_samples)
        take = epoch_permutation(num_samples, seed + epoch)[offset: offset + count - len(out)].tolist()
        out += take
        position += len(take)
    return out


def check_batch_split(global_batch_size: int, micro_batch_size: int, dp_size: int, grad_accum: int) -> None:
    """The global batch is micro batch x data-parallel size x accumulation (the plan resolved it so; a rank checks
    the numbers it was given once per step, not once per micro batch)."""
    if global_batch_size != micro_batch_size * dp_size * grad_accum:
        raise LauncherError(
            "train.global_batch_size", global_batch_size,
            f"it must equal micro_batch_size x dp x grad_accum = {micro_batch_size} x {dp_size} x {grad_accum} "
            f"= {micro_batch_size * dp_size * grad_accum}",
        )


def micro_batch_indices(num_samples: int, seed: int, global_step: int, global_batch_size: int,
                        micro_batch_size: int, grad_accum: int, dp_rank: int, dp_size: int,
                        micro_step: int) -> list[int]:
    """The samples dp rank `dp_rank` trains on in accumulation step `micro_step` of `global_step`.

    Global step s owns stream[s*G:(s+1)*G]; it is cut into grad_accum chunks of micro_batch_size*dp_size and rank r
    takes its micro_batch_size slice of chunk `micro_step`, so the union over ranks and micro steps is the same set
    on any topology.
    """
    if not (0 <= dp_rank < dp_size and 0 <= micro_step < grad_accum):
        raise ValueError(f"dp_rank={dp_rank} of {dp_size} or micro_step={micro_step} of {grad_accum} out of range")
    step_samples = sample_stream_indices(num_samples, seed, global_step * global_batch_size, global_batch_size)
    chunk_size = micro_batch_size * dp_size
    chunk = step_samples[micro_step * chunk_size: (micro_step + 1) * chunk_size]
    return chunk[dp_rank * micro_batch_size: (dp_rank + 1) * micro_batch_size]


def global_batch_target_tokens(examples: Sequence[Example | PackedExample], indices: Sequence[int]) -> int:
    """Label tokens (after the causal shift) in the whole global batch: divide the summed token loss by this and
    the loss is the mean over the global batch on any topology, not a mean of per-micro-batch means."""
    return sum(examples[i].num_targets for i in indices)


def _padded(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    """Through numpy: torch.tensor on nested lists costs ~10 ms per 4 x 2048 batch, time the GPU would sit idle."""
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out)


def collate(examples: Sequence[Example | PackedExample], pad_id: int, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Right-pad a micro batch to its longest row, rounded up to `multiple` (FP8's compiled layers take a few widths,
    not every one: launcher/train/fp8.py).

    Plain examples get an attention_mask when a row is padded; full rows need none (SDPA then runs its causal kernel
    without transformers first reading the mask on the GPU, a host sync per forward). Packed rows get position_ids and NO attention_mask: transformers builds
    the block-diagonal causal mask from position_ids only when attention_mask is None (and use_cache is off); the
    padding tail gets its own restarting positions, so it forms one more document that nothing attends to.
    """
    width = -(-max(len(example.input_ids) for example in examples) // multiple) * multiple
    batch = {
        "input_ids": _padded([e.input_ids for e in examples], width, pad_id),
        "labels": _padded([e.labels for e in examples], width, IGNORE_INDEX),
    }
    packed = [isinstance(example, PackedExample) for example in examples]
    if all(packed):
        batch["position_ids"] = _padded([e.position_ids + list(range(width - len(e.input_ids))) for e in examples],
                                        width, 0)
    elif not any(packed):
        if any(len(e.input_ids) < width for e in examples):
            mask = np.arange(width)[None, :] < np.array([len(e.input_ids) for e in examples])[:, None]
            batch["attention_mask"] = torch.from_numpy(mask.astype(np.int64))
    else:
        raise ValueError("a micro batch mixes packed and plain examples")
    return batch


def step_target_tokens(examples: Sequence[Any], seed: int, global_batch: int, step: int) -> int:
    """Label tokens of the whole global batch of `step` (every rank computes the same number): the loss of a step is
    their mean, whatever the number of ranks."""
    n = len(examples)
    return global_batch_target_tokens(examples, sample_stream_indices(n, seed, step * global_batch, global_batch))


def rank_micro_batches(examples: Sequence[Any], seed: int, global_batch: int, micro_batch: int, grad_accum: int,
                       dp_rank: int, dp_size: int, step: int, pad_id: int, multiple: int = 1
                       ) -> Iterator[dict[str, torch.Tensor]]:
    """This data-parallel rank's collated micro batches of `step`, one at a time (collated as they are used), each
    padded to a multiple of `multiple` tokens."""
    check_batch_split(global_batch, micro_batch, dp_size, grad_accum)
    for micro in range(grad_accum):
        idx = micro_batch_indices(len(examples), seed, step, global_batch, micro_batch, grad_accum, dp_rank, dp_size,
                                  micro)
        yield collate([examples[i] for i in idx], pad_id, multiple)


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    """Real (unpadded) tokens of a collated micro batch."""
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
