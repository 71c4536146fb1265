"""Where a data set's rows come from: a local file or folder, or a hub id, as one DataSource (registry.py turns
registry entries, paths and hub ids into them).

The entry resolves every name the user wrote into a DataSource (checked up front, so a typo fails before any process
starts); the DataSource travels in plan.json and each rank reads its rows with read_rows. JSON and JSON Lines go
through formats.load_rows (the project's own reader: row-level errors, encodings); parquet, CSV, arrow and the hub
go through Hugging Face `datasets`, imported only when such a source is read.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from launcher.data.formats import load_rows
from launcher.errors import LauncherError

KINDS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
UNDERSTOOD = f"the kinds understood are {' '.join(KINDS)}"  # LLaMA-Factory's, less .txt (pre-training text)
JSON_HINT = "fix the file: a .json file holds a list of rows, a .jsonl file one row per line"


@dataclass(frozen=True)
class DataSource:
    """One data set to read: a local file or folder (`path`) or a hub data set (`hub_id`), with how its rows are
    shaped. `config_field` is the field the name came from, so errors in a rank still name what the user typed."""

    name: str
    path: str = ""
    hub_id: str = ""
    formatting: str = "alpaca"
    columns: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    split: str = "train"
    subset: str = ""
    folder: str = ""
    num_samples: int = 0
    config_field: str = "data.datasets"

    def kind(self) -> str:
        """json | parquet | csv | arrow | hub; a folder has the kind of its files, which must all be one kind."""
        if not self.path:
            return "hub"
        kinds = {_file_kind(f, self) for f in self.files()}
        if len(kinds) > 1:
            raise self.error("put files of one kind in the folder, or name the files as separate data sets",
                             f"the folder holds files of several kinds: {', '.join(sorted(kinds))}")
        return kinds.pop()

    def files(self) -> list[str]:
        """The local files to read: the path itself, or the folder's files, sorted (hidden files skipped). A folder
        written by Dataset.save_to_disk reads as its .arrow files (its state.json is not data)."""
        if not os.path.isdir(self.path):
            return [self.path]
        names = sorted(n for n in os.listdir(self.path) if not n.startswith(".")
                       and os.path.isfile(os.path.join(self.path, n)))
        if {"state.json", "dataset_info.json"} <= set(names):
            names = [n for n in names if n.endswith(".arrow")]
        if not names:
            raise self.error(f"put data files in it ({UNDERSTOOD})", f"the folder {self.path} holds no files")
        return [os.path.join(self.path, n) for n in names]

    def error(self, hint: str, problem: str) -> LauncherError:
        return LauncherError(self.config_field, self.name, hint, problem=problem)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSource:
        return cls(**{**d, "columns": dict(d.get("columns", {})), "tags": dict(d.get("tags", {}))})


def _file_kind(path: str, source: DataSource) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in KINDS:
        raise source.error(f"give data files of a kind understood: {' '.join(KINDS)}",
                           f"{path} has the extension {ext or '(none)'!r}, which is not a data file kind")
    return KINDS[ext]


def read_rows(source: DataSource) -> list[dict[str, Any]]:
    """The source's rows as plain dicts, the first num_samples of them when the entry says so."""
    kind = source.kind()
    rows = _json_rows(source) if kind == "json" else _datasets_rows(source, kind)
    if not rows:
        raise source.error("give a data set with rows", "it holds no rows")
    return rows[: source.num_samples] if source.num_samples else rows


def _json_rows(source: DataSource) -> list[dict[str, Any]]:
    """load_rows per file. Its errors name data.path and the file; for a source from another field they are
    re-raised naming that field and the name the user wrote, keeping the file and the row in the problem."""
    rows: list[dict[str, Any]] = []
    for path in source.files():
        try:
            rows += load_rows(path)
        except LauncherError as err:
            if err.field == source.config_field:  # data.path: the error already names the file
                raise
            hint = JSON_HINT if "data.path" in err.hint else err.hint  # its generic hint speaks of data.path
            raise source.error(hint, f"{path}: {err.problem}") from err
    return rows


def _datasets_rows(source: DataSource, kind: str) -> list[dict[str, Any]]:
    import datasets  # about a second to import: only when a source needs it
    import pyarrow

    datasets.disable_progress_bars()  # every rank reads the set: no "Generating train split" bar from each
    datasets.logging.set_verbosity_error()

    try:
        if kind == "hub":
            data = datasets.load_dataset(source.hub_id, name=source.subset or None, split=source.split,
                                         data_dir=source.folder or None)
        else:
            data = datasets.load_dataset(kind, data_files=source.files(), split="train")
    except (OSError, ValueError, datasets.exceptions.DatasetsError, pyarrow.ArrowException) as err:
        raise source.error(_read_hint(source, kind), f"{_where(source)} could not be read: {_first_line(err)}") from err
    return data.to_list()


def _where(source: DataSource) -> str:
    if not source.hub_id:
        return source.path
    parts = [f"split {source.split}"] + [f"{key} {value}" for key, value in
                                          (("subset", source.subset), ("folder", source.folder)) if value]
    return f"the hub data set {source.hub_id} ({', '.join(parts)})"


def _read_hint(source: DataSource, kind: str) -> str:
    if kind == "hub":
        return ("check the id, subset and split; without network access the data set must already be in the "
                "Hugging Face cache (HF_DATASETS_CACHE), or download it and give the files")
    return f"check that the file exists and is a valid {kind} file"


def _first_line(err: BaseException) -> str:
    """The cause in a line: datasets wraps parse failures in a generic error whose __cause__ says what happened."""
    if isinstance(err.__cause__, Exception) and type(err).__name__ == "DatasetGenerationError":
        return _first_line(err.__cause__)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def fingerprint(source: DataSource) -> dict[str, Any]:
    """What the rows depend on, for cache keys: each file's realpath, size and mtime_ns, or the hub coordinates
    (a hub data set is taken as fixed once cached)."""
    if source.hub_id:
        where: dict[str, Any] = {"hub_id": source.hub_id, "split": source.split, "subset": source.subset,
                                 "folder": source.folder}
    else:
        where = {"files": [_file_fingerprint(path, source) for path in source.files()]}
    return {"kind": source.kind(), **where, "num_samples": source.num_samples}


def _file_fingerprint(path: str, source: DataSource) -> dict[str, Any]:
    try:
        st = os.stat(path)
    except OSError as err:
        raise source.error("give an existing file or folder", f"{path} cannot be read: {err.strerror}") from err
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
