"""Checks of the user's files done at the entry, before anything is launched: paths exist, rows parse.

Failing here costs a second; failing in a rank costs a queue wait and a traceback per process.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from launcher.config import ArchConfig, LauncherConfig
from launcher.errors import LauncherError


def looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or os.path.exists(path) or path.count("/") != 1


def absolute(path: str, cwd: str) -> str:
    return str(Path(cwd, os.path.expanduser(path)).resolve()) if path else ""


def check_model(cfg: LauncherConfig, cwd: str) -> LauncherConfig:
    """A local model dir must hold config.json; its shape replaces the preset's for estimates."""
    path = cfg.model.path
    if not path or not looks_local(path):
        return cfg
    full = absolute(path, cwd)
    config_json = Path(full) / "config.json"
    if not config_json.exists():
        what = "does not exist" if not Path(full).exists() else "has no config.json"
        raise LauncherError(
            "model.path", path, "give a Hugging Face model directory (config.json + weights) or a hub id such as "
            "meta-llama/Llama-3.2-3B-Instruct", problem=f"{full} {what}",
        )
    arch = arch_from_hf_config(json.loads(config_json.read_text()), cfg.model.arch)
    model = dataclasses.replace(cfg.model, path=full, arch=arch)
    return dataclasses.replace(cfg, model=model)


def arch_from_hf_config(hf: dict, fallback: ArchConfig) -> ArchConfig:
    heads = hf.get("num_attention_heads", fallback.num_heads)
    return ArchConfig(
        model_type=hf.get("model_type", fallback.model_type),
        hidden_size=hf.get("hidden_size", fallback.hidden_size),
        num_layers=hf.get("num_hidden_layers", fallback.num_layers),
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        intermediate_size=hf.get("intermediate_size", fallback.intermediate_size),
        vocab_size=hf.get("vocab_size", fallback.vocab_size),
        max_position_embeddings=hf.get("max_position_embeddings", fallback.max_position_embeddings),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def check_data(cfg: LauncherConfig, cwd: str) -> tuple[LauncherConfig, int]:
    """Parse every row now (a malformed row is a user error, not a rank crash); returns the row count."""
    from launcher.assets import default_data_path
    from launcher.train.data import load_conversations

    path = absolute(cfg.data.path, cwd) if cfg.data.path else default_data_path(cfg.data.format)
    if not Path(path).is_file():
        raise LauncherError(
            "data.path", cfg.data.path, "give a JSON or JSONL file in alpaca or sharegpt format",
            problem=f"{path} does not exist",
        )
    rows = load_conversations(path, cfg.data.format)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=path)), len(rows)


def check_tokenizer(cfg: LauncherConfig, cwd: str) -> LauncherConfig:
    tok = cfg.model.tokenizer
    if tok and looks_local(tok):
        full = absolute(tok, cwd)
        if not Path(full).exists():
            raise LauncherError("model.tokenizer", tok, "give a tokenizer directory or hub id", problem=f"{full} does not exist")
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tokenizer=full))
    return cfg
