"""Tokenized data sets kept between launches.

Every rank renders every conversation through the chat template and the tokenizer before its first step: seconds
for the shipped set, minutes for a large one, paid again by each relaunch and each restart after a crash. The
result is kept in one file per (data set and its part, every input that shapes it, seq_len, tokenizer, library
versions), like the `datasets` library's cache: a changed data file (size or mtime), column mapping, validation
split, tokenizer or chat template gets a new file. A
cache that cannot be read or written only costs the tokenization; it never stops a run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from launcher.data.formats import Example
from launcher.data.tokenization import warn_dropped

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # raise when tokenization starts producing different ids or labels for the same inputs
CACHE_DIR_VAR = "LAUNCHER_CACHE_DIR"


def cache_root(environ: dict[str, str]) -> Path:
    """$LAUNCHER_CACHE_DIR, else $XDG_CACHE_HOME/launcher, else ~/.cache/launcher."""
    if environ.get(CACHE_DIR_VAR):
        return Path(environ[CACHE_DIR_VAR]).expanduser()
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "launcher"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What decides the ids: the tokenizer's own serialization (vocabulary, merges, normalizer), its chat template
    and special tokens, whatever its name or path."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [type(tokenizer).__name__, body, str(tokenizer.chat_template), str(tokenizer.pad_token),
             json.dumps(sorted(map(str, tokenizer.all_special_tokens)))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def cache_path(environ: dict[str, str], inputs: dict[str, Any], seq_len: int, tokenizer: Any) -> Path:
    """The cache file for tokenized examples made from `inputs` (what the caller read: each data file's path, size
    and mtime, the format and column mapping, the split; JSON-able)."""
    return cache_root(environ) / "tokenized" / f"{cache_key(inputs, seq_len, tokenizer)}.pt"


def cache_key(inputs: dict[str, Any], seq_len: int, tokenizer: Any) -> str:
    import tokenizers
    import transformers

    parts = {"version": CACHE_VERSION, "inputs": inputs, "seq_len": seq_len,
             "tokenizer": tokenizer_fingerprint(tokenizer), "transformers": transformers.__version__,
             "tokenizers": tokenizers.__version__}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cached_examples(path: Path | None, build: Callable[[], tuple[list[Example], int]], write: bool,
                    seq_len: int) -> list[Example]:
    """The examples stored at `path`, else build()'s (written there when `write`: one rank per host does). build
    returns the examples and how many conversations they came from (those without an answer token are dropped)."""
    if path is None:
        return build()[0]
    cached = read(path)
    if cached is not None:
        examples, total = cached
        log.info(f"data: {len(examples)} tokenized examples from the cache {path}")
        warn_dropped(total - len(examples), total, seq_len)
        return examples
    examples, total = build()
    if write:
        store(path, examples, total)
    return examples


def read(path: Path) -> tuple[list[Example], int] | None:
    """None when the file is missing or unreadable (a truncated file cannot appear: writes are atomic)."""
    import torch

    if not path.is_file():
        return None
    try:
        saved = torch.load(path, weights_only=True)
        ids, labels = saved["input_ids"].tolist(), saved["labels"].tolist()
        ends = saved["lengths"].cumsum(0).tolist()
        total = int(saved["conversations"])
    except Exception as err:  # any damage: tokenize again
        log.warning(f"data: ignoring the unreadable cache file {path} ({type(err).__name__}: {err})")
        return None
    starts = [0, *ends[:-1]]
    return [Example(input_ids=ids[a:b], labels=labels[a:b]) for a, b in zip(starts, ends)], total


def store(path: Path, examples: list[Example], conversations: int) -> None:
    """Written to a temporary file and renamed: a reader on another rank sees the whole file or none."""
    import torch

    flat_ids = [i for e in examples for i in e.input_ids]
    flat_labels = [i for e in examples for i in e.labels]
    saved = {"input_ids": torch.tensor(flat_ids, dtype=torch.int32),
             "labels": torch.tensor(flat_labels, dtype=torch.int32),
             "lengths": torch.tensor([len(e.input_ids) for e in examples], dtype=torch.int64),
             "conversations": torch.tensor(conversations)}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save(saved, f)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from the other users of a shared LAUNCHER_CACHE_DIR
        os.replace(tmp, path)
    except OSError as err:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        log.warning(f"data: could not write the tokenized data cache {path} ({err}); the next launch tokenizes again")
        return
    log.info(f"data: {len(examples)} tokenized examples cached in {path}")
