"""Which rows a job trains and validates on: the data sets the config names (data.path or data.datasets, through a
LLaMA-Factory registry), their usable rows, the validation rows held out of them (data.val_size) or the separate
validation sets (data.eval_path / data.eval_datasets), and the samples each set gives per epoch (data.weights).

The launching host reads every set once (`plan_sets`): a set with no usable row stops the launch there, and the
counts go into the plan and the start summary. Each rank reads the sets again (`set_conversations`) and splits them
with the same seed, so every rank holds the same rows in the same order without anything being sent.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from typing import Any

from launcher.data.formats import Conversation, read_conversations
from launcher.data.mixing import mix_counts, split_validation
from launcher.data.registry import resolve_sources
from launcher.data.sources import DataSource, read_rows
from launcher.errors import LauncherError

log = logging.getLogger("launcher")


@dataclass(frozen=True)
class DataSet:
    """One data set as the plan carries it: where its rows come from and what the launching host counted."""

    source: DataSource
    rows: int = 0  # usable rows, after dropped ones and data.max_samples
    dropped: int = 0
    val_rows: int = 0  # of `rows`, held out for validation (data.val_size)
    samples: int = 0  # training samples it gives each epoch (data.weights)

    @property
    def train_rows(self) -> int:
        return self.rows - self.val_rows

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "source": self.source.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSet":
        return cls(**{**d, "source": DataSource.from_dict(d["source"])})


def sources(data: Any, cwd: str) -> tuple[list[DataSource], list[DataSource]]:
    """The training and validation sources `data` (the config's DataConfig) names. No data.path and no
    data.datasets: the shipped set."""
    from launcher.assets import default_data_path

    if data.datasets:
        train = resolve_sources(list(data.datasets), data.registry, data.format, cwd, "data.datasets")
    elif data.path:
        train = resolve_sources([data.path], "", data.format, cwd, "data.path")
    else:
        shipped = default_data_path(data.format)
        train = [DataSource(name=f"shipped {data.format} set", path=shipped, formatting=data.format)]
    if data.eval_datasets:
        evals = resolve_sources(list(data.eval_datasets), data.registry, data.format, cwd, "data.eval_datasets")
    elif data.eval_path:
        evals = resolve_sources([data.eval_path], "", data.format, cwd, "data.eval_path")
    else:
        evals = []
    return train, evals


def load_set(source: DataSource, max_samples: int) -> tuple[list[Conversation], Any]:
    """A set's usable conversations (its first data.max_samples when set) and what was dropped, by reason."""
    try:
        conversations, drops = read_conversations(read_rows(source), source.formatting, source.columns or None,
                                                  source.tags or None, source.name)
    except LauncherError as err:  # no usable row: named on the field the set came from (data.datasets, ...)
        if err.field != "data":
            raise
        raise source.error(err.hint, err.problem) from err
    return conversations[: max_samples or None], drops


def plan_sets(data: Any, seed: int, cwd: str) -> tuple[tuple[DataSet, ...], tuple[DataSet, ...]]:
    """Every set read and counted on the launching host (drops are reported here, once), with the validation split
    and the per-epoch mix. Refuses what cannot train: a set with no usable row, a split that leaves nothing."""
    train_sources, eval_sources = sources(data, cwd)
    train = [_counted(source, data.max_samples) for source in train_sources]
    evals = tuple(_counted(source, data.max_samples) for source in eval_sources)
    if data.val_size:
        split = split_validation([s.rows for s in train], data.val_size, seed)
        train = [replace(s, val_rows=len(val)) for s, (_, val) in zip(train, split)]
    samples = mix_counts([s.train_rows for s in train], list(data.weights))
    return tuple(replace(s, samples=n) for s, n in zip(train, samples)), evals


def _counted(source: DataSource, max_samples: int) -> DataSet:
    conversations, drops = load_set(source, max_samples)
    message = drops.message(source.name)
    if message:
        log.warning(message)
    return DataSet(source=source, rows=len(conversations), dropped=drops.dropped)


def set_conversations(sets: tuple[DataSet, ...], index: int, val_size: float, seed: int, max_samples: int
                      ) -> tuple[list[Conversation], list[Conversation]]:
    """Training set `index`'s (training, validation) conversations on a rank: the launching host's split, redone
    from the counts in the plan (a split by row count spreads over every set, so it needs all their sizes)."""
    ds = sets[index]
    conversations, _ = load_set(ds.source, max_samples)
    if len(conversations) != ds.rows:
        raise LauncherError("data", ds.source.name, "keep data files unchanged while a job runs, and launch again",
                            problem=f"the launching host counted {ds.rows} usable rows and this rank reads "
                            f"{len(conversations)}: the file changed, or differs between hosts")
    if not val_size:
        return conversations, []
    train_idx, val_idx = split_validation([s.rows for s in sets], val_size, seed)[index]
    return [conversations[i] for i in train_idx], [conversations[i] for i in val_idx]


def describe(train: tuple[DataSet, ...], evals: tuple[DataSet, ...], weights: list[float]) -> list[str]:
    """The start summary's data lines: each set's rows and share of an epoch, and the validation set."""
    epoch = sum(s.samples for s in train) or 1
    lines = []
    for s in train:
        held = f", {s.val_rows} held out for validation" if s.val_rows else ""
        dropped = f" ({s.dropped} dropped)" if s.dropped else ""
        mix = f"; {s.samples} samples per epoch ({s.samples / epoch:.0%}, {s.samples / max(s.train_rows, 1):.2f}x)" \
            if weights else ""
        lines.append(f"{s.source.name}: {s.rows} rows{dropped}{held}{mix}")
    if evals:
        lines.append("validation: " + ", ".join(f"{s.source.name} ({s.rows} rows)" for s in evals))
    elif any(s.val_rows for s in train):
        lines.append(f"validation: {sum(s.val_rows for s in train)} rows held out of the training sets")
    return lines
