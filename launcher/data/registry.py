"""LLaMA-Factory's data registry (dataset_info.json): entries read unchanged, each becoming a DataSource; and
`resolve_sources`, which turns every name a user wrote (a registry entry, a path, a hub id) into one.

An entry the launcher cannot train on as supervised fine-tuning (preference pairs, KTO, images/video/audio, other
hubs, loading scripts) is refused with its reason, rather than silently trained as something else.
"""
from __future__ import annotations

import json
import os
import re
from typing import Callable

from launcher.data.sources import KINDS, DataSource
from launcher.errors import LauncherError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LISTED_NAMES = 20
REGISTRY_FILE = "dataset_info.json"  # LLaMA-Factory's name, looked up when data.registry is a folder
FORMATTINGS = ("alpaca", "sharegpt", "openai")
OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
               "observation_tag": "tool", "system_tag": "system"}
COLUMNS = ("prompt", "query", "response", "history", "messages", "system", "tools", "images", "videos", "audios",
           "chosen", "rejected", "kto_tag")
TAGS = ("role_tag", "content_tag", "user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")
KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "file_name", "formatting",
        "ranking", "subset", "split", "folder", "num_samples", "columns", "tags")
ELSEWHERE = {"ms_hub_url": "the ModelScope hub", "om_hub_url": "the Modelers (openMind) hub",
             "script_url": "a dataset loading script", "cloud_file_name": "a cloud file (s3:// or gs://)"}
REFUSED_COLUMNS = {
    "images": "it is multimodal (images); this launcher trains on text only",
    "videos": "it is multimodal (videos); this launcher trains on text only",
    "audios": "it is multimodal (audios); this launcher trains on text only",
    "kto_tag": "it is a KTO data set (kto_tag); this launcher does supervised fine-tuning only",
    "chosen": "it holds preference pairs (chosen/rejected); this launcher does supervised fine-tuning only",
    "rejected": "it holds preference pairs (chosen/rejected); this launcher does supervised fine-tuning only",
}

Fail = Callable[..., LauncherError]


def load_registry(path: str, cwd: str) -> tuple[dict[str, dict], str]:
    """The registry's entries and its folder (entries' file_name is relative to it). `path` is the JSON file, or
    the folder holding dataset_info.json as LLaMA-Factory's dataset_dir is."""
    full = os.path.abspath(os.path.join(cwd, os.path.expanduser(path)))
    if os.path.isdir(full):
        full = os.path.join(full, REGISTRY_FILE)
    if not os.path.isfile(full):
        raise _registry_error(path, f"{full} does not exist")
    try:
        with open(full, encoding="utf-8-sig") as f:
            entries = json.load(f)
    except UnicodeDecodeError as err:
        raise _registry_error(path, f"{full} is not UTF-8 text: byte {err.start} cannot be decoded") from err
    except json.JSONDecodeError as err:
        raise _registry_error(path, f"{full} is not valid JSON: line {err.lineno} column {err.colno}: "
                              f"{err.msg}") from err
    if not isinstance(entries, dict):
        raise _registry_error(path, f"{full} holds a JSON {type(entries).__name__}, not an object of entries")
    return entries, os.path.dirname(full)


def _registry_error(path: str, problem: str) -> LauncherError:
    return LauncherError("data.registry", path, "give a LLaMA-Factory dataset_info.json (or the folder holding it): "
                         'a JSON object of entries such as {"my_data": {"file_name": "my_data.json"}}', problem=problem)


def source_for(name: str, entry: dict, folder: str, field: str = "data.datasets") -> DataSource:
    """The entry as a DataSource, read as LLaMA-Factory reads it: hf_hub_url first, file_name relative to folder."""
    def fail(problem: str, hint: str = "remove it from the list, or change the entry") -> LauncherError:
        return LauncherError(field, name, hint, problem=f"registry entry {name!r}: {problem}")

    if not isinstance(entry, dict):
        raise fail(f"it is a JSON {type(entry).__name__}, not an object")
    _check_keys(entry, fail)
    _check_trainable(entry, fail)
    columns = _string_map(entry, "columns", COLUMNS, fail)
    tags = _string_map(entry, "tags", TAGS, fail)
    formatting = _text(entry, "formatting", "alpaca", fail)
    if formatting not in FORMATTINGS:
        raise fail(f"formatting={formatting!r} is not a data format this launcher reads",
                   f"use one of: {', '.join(FORMATTINGS)}")
    if formatting == "openai":  # sharegpt whose turns are {role, content} with roles user/assistant/system
        formatting, tags = "sharegpt", {**OPENAI_TAGS, **tags}
    place = _place(entry, folder, fail)
    return DataSource(name, **place, formatting=formatting, columns=columns, tags=tags,
                      split=_text(entry, "split", "train", fail), subset=_text(entry, "subset", "", fail),
                      folder=_text(entry, "folder", "", fail), num_samples=_num_samples(entry, fail),
                      config_field=field)


def _check_keys(entry: dict, fail: Fail) -> None:
    unknown = sorted(set(entry) - set(KEYS))
    if unknown:
        raise fail(f"LLaMA-Factory defines no key {', '.join(map(repr, unknown))}",
                   f"an entry's keys are: {', '.join(KEYS)}")


def _check_trainable(entry: dict, fail: Fail) -> None:
    """Refuse what supervised fine-tuning on text cannot use, saying why."""
    if entry.get("ranking"):
        raise fail("ranking: true marks preference pairs (reward modelling, DPO, ORPO), which this launcher does not "
                   "train; it does supervised fine-tuning only")
    columns = entry.get("columns") if isinstance(entry.get("columns"), dict) else {}
    for column, reason in REFUSED_COLUMNS.items():
        if columns.get(column):
            raise fail(f"columns.{column} is set: {reason}")


def _place(entry: dict, folder: str, fail: Fail) -> dict[str, str]:
    """Where the rows are, with LLaMA-Factory's precedence: hf_hub_url, other hubs, script, cloud file, file_name."""
    if entry.get("hf_hub_url"):
        return {"hub_id": _text(entry, "hf_hub_url", "", fail)}
    for key, what in ELSEWHERE.items():
        if entry.get(key):
            raise fail(f"{key} loads from {what}, which this launcher does not support",
                       "download the data and point file_name at it, or give an hf_hub_url")
    file_name = _text(entry, "file_name", "", fail)
    if not file_name:
        raise fail("it has none of file_name, hf_hub_url", "give file_name (a file or folder next to the registry) "
                   "or hf_hub_url (a Hugging Face hub data set)")
    path = os.path.join(folder, file_name)
    if not os.path.exists(path):
        raise fail(f"file_name {file_name!r} does not exist (looked for {path})",
                   "file_name is relative to the registry's folder; fix it or add the file")
    return {"path": path}


def _text(entry: dict, key: str, default: str, fail: Fail) -> str:
    value = entry.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise fail(f"{key} must be a string, got {type(value).__name__}")
    return value


def _string_map(entry: dict, key: str, known: tuple[str, ...], fail: Fail) -> dict[str, str]:
    """columns or tags: only LLaMA-Factory's keys, each naming a column or tag by a string."""
    value = entry.get(key) or {}
    if not isinstance(value, dict):
        raise fail(f"{key} must be an object, got {type(value).__name__}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise fail(f"{key} has {', '.join(map(repr, unknown))}, which LLaMA-Factory does not define",
                   f"the known {key} are: {', '.join(known)}")
    bad = sorted(k for k, v in value.items() if not isinstance(v, str))
    if bad:
        raise fail(f"{key}.{bad[0]} must be a string (a column or tag name)")
    return dict(value)


def _num_samples(entry: dict, fail: Fail) -> int:
    value = entry.get("num_samples")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise fail(f"num_samples={value!r} must be a positive whole number of rows")
    return value


def resolve_sources(names: list[str], registry_path: str, default_format: str, cwd: str,
                    field: str) -> list[DataSource]:
    """Each name as a DataSource: a registry entry first, then a local file or folder (relative to cwd), then a
    hub id (owner/name). Anything else is refused, listing the registry's names."""
    entries, folder = load_registry(registry_path, cwd) if registry_path else ({}, "")
    sources = []
    for name in names:
        if name in entries:
            source = source_for(name, entries[name], folder, field=field)
        else:
            source = _plain_source(name, default_format, cwd, field, entries, registry_path)
        source.kind()  # an unknown extension or a mixed folder fails now, not in the ranks
        sources.append(source)
    return sources


def _plain_source(name: str, default_format: str, cwd: str, field: str, entries: dict[str, dict],
                  registry_path: str) -> DataSource:
    path = os.path.abspath(os.path.join(cwd, os.path.expanduser(name)))
    if name and os.path.exists(path):
        return DataSource(name, path=path, formatting=default_format, config_field=field)
    if _looks_like_hub_id(name):
        return DataSource(name, hub_id=name, formatting=default_format, config_field=field)
    raise LauncherError(field, name, _unknown_hint(entries, registry_path), problem=(
        f"it is {'not an entry of the registry ' + registry_path + ', ' if registry_path else ''}not a file or "
        f"folder (looked for {path}) and not a hub id (owner/name)"))


def _looks_like_hub_id(name: str) -> bool:
    """owner/name, and not a mistyped local path: no ./ ~ or / at the start, no data-file extension."""
    return bool(HUB_ID.match(name)) and not name.startswith(".") and os.path.splitext(name)[1].lower() not in KINDS


def _unknown_hint(entries: dict[str, dict], registry_path: str) -> str:
    if not registry_path:
        return ("give an existing file or folder (relative to the working directory), or a hub id such as "
                "tatsu-lab/alpaca")
    names = sorted(entries)
    listed = ", ".join(names[:LISTED_NAMES]) + (f" and {len(names) - LISTED_NAMES} more" if len(names) > LISTED_NAMES
                                                else "")
    return f"the registry holds: {listed or '(no entries)'}; a file, folder or hub id works too"
