"""Secret-looking variables (WANDB_API_KEY, HF_TOKEN, AWS_SECRET_ACCESS_KEY, ...): their names may be written and
logged, their values never. Standard library only: the plan, the renderers and the launch side all use it."""
from __future__ import annotations

import re
from typing import Any

SECRET_NAME = re.compile(r"(^|_)(KEY|APIKEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)(_|$)", re.IGNORECASE)


def is_secret(name: str) -> bool:
    """Names such as WANDB_API_KEY, HF_TOKEN or AWS_SECRET_ACCESS_KEY: never written to a file, never exported."""
    return bool(SECRET_NAME.search(name))


HIDDEN = "<hidden>"


def mask_secrets(value: Any) -> Any:
    """A copy of a config tree (dicts, lists) with the value of every secret-named key replaced by HIDDEN: what is
    written to resolved.yaml, plan.json and wandb's config keeps the names and never the values."""
    if isinstance(value, dict):
        return {k: HIDDEN if isinstance(k, str) and is_secret(k) and v not in ("", None) else mask_secrets(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_secrets(v) for v in value)
    return value


def mask_override(arg: str) -> str:
    """`+topo.env.HF_TOKEN=abc` -> `+topo.env.HF_TOKEN=<hidden>` (command lines kept in files and on the console)."""
    key, eq, _ = arg.partition("=")
    return f"{key}={HIDDEN}" if eq and is_secret(key.rsplit(".", 1)[-1]) else arg
