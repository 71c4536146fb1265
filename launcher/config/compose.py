"""Config composition: CLI overrides + conf/ -> typed LauncherConfig, with Hydra's errors turned into user errors.

topo and plan stay out of the defaults list so that `+topo=X +plan=Y` works as written (Hydra refuses `+group=`
for a group already in the defaults list); they are filled in here when absent, and `topo=X` is accepted too.
"""
from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from launcher.config.schema import LauncherConfig, register
from launcher.errors import LauncherError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
DEFAULT_PRESETS = {"topo": "local", "plan": "zero2"}
GROUPS = ("topo", "plan", "model", "data", "method")


def normalize_overrides(overrides: list[str], defaults: dict[str, str] = DEFAULT_PRESETS) -> list[str]:
    """Make `topo=X` mean `+topo=X` and add `+topo=local +plan=zero2` when the user named none."""
    out: list[str] = []
    seen: set[str] = set()
    for o in overrides:
        key = o.split("=", 1)[0].lstrip("+")
        if key in defaults and "=" in o:
            out.append("+" + o.lstrip("+"))
            seen.add(key)
        else:
            out.append(o)
    out.extend(f"+{group}={preset}" for group, preset in defaults.items() if group not in seen)
    return out


def presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def preset_description(group: str, name: str) -> str:
    """The first comment line of a preset file says what it is for."""
    path = CONF_DIR / group / f"{name}.yaml"
    first = path.read_text().splitlines()[0] if path.exists() else ""
    return first.lstrip("# ").strip()


def compose(overrides: list[str]) -> tuple[LauncherConfig, DictConfig]:
    """Compose and validate; returns the typed config and the composed DictConfig (for resolved.yaml)."""
    register()
    normalized = normalize_overrides(overrides)
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="launcher"):
            cfg = hydra_compose(config_name="config", overrides=normalized)
    except MissingConfigException as e:
        raise _unknown_preset(e, normalized) from e
    except (HydraException, OmegaConfBaseException) as e:
        raise _bad_override(e, normalized) from e
    try:
        typed = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise LauncherError(str(e.full_key), "???", "this field has no default: set it on the command line") from e
    except OmegaConfBaseException as e:
        raise _bad_override(e, normalized) from e
    assert isinstance(typed, LauncherConfig)
    return typed, cfg


def _unknown_preset(e: MissingConfigException, overrides: list[str]) -> LauncherError:
    msg = str(e)
    m = re.search(r"Could not find '(\w+)/([^']+)'", msg) or re.search(r"'(\w+)/([^']+)'", msg)
    if m and m.group(1) in GROUPS:
        group, name = m.group(1), m.group(2)
        return LauncherError(group, name, f"there is no such preset: use one of {', '.join(presets(group))}")
    return LauncherError("config", " ".join(overrides), msg.splitlines()[0])


def _bad_override(e: Exception, overrides: list[str]) -> LauncherError:
    msg = f"{e}\n{e.__cause__ or ''}"
    key_m = re.search(r"Key '([^']+)' not in '(\w+)'", msg)
    full_m = re.search(r"full_key: ([\w.\[\]]+)", msg)
    override_m = re.search(r"Could not override '([^']+)'", msg) or re.search(r"override '([^']+)'", msg)
    if key_m:
        field_name = override_m.group(1) if override_m else (full_m.group(1) if full_m else key_m.group(1))
        parent = field_name.rsplit(".", 1)[0] if "." in field_name else ""
        known = _known_keys(parent)
        hint = f"there is no such field; {parent or 'the config'} has: {', '.join(known)}" if known else "no such field"
        return LauncherError(field_name, _given(field_name, overrides, key_m.group(1)), hint)
    value_m = re.search(r"Value '([^']*)'", msg)
    if full_m:
        kind = re.search(r"could not be converted to (\w+)", msg)
        hint = f"it must be of type {kind.group(1).lower()}" if kind else msg.splitlines()[0]
        return LauncherError(full_m.group(1), value_m.group(1) if value_m else "?", hint)
    return LauncherError("override", msg.splitlines()[0], "check the override's syntax: key=value, +group=preset")


def _given(field_name: str, overrides: list[str], fallback: str) -> str:
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key == field_name:
            return value
    return fallback


def _known_keys(dotted: str) -> list[str]:
    node: object = LauncherConfig
    for part in [p for p in dotted.split(".") if p]:
        match = [f for f in fields(node) if f.name == part] if is_dataclass(node) else []  # type: ignore[arg-type]
        if not match:
            return []
        node = match[0].default_factory() if callable(match[0].default_factory) else match[0].default  # type: ignore[misc]
    return [f.name for f in fields(node)] if is_dataclass(node) else []  # type: ignore[arg-type]
