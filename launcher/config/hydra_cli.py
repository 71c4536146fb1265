"""Hydra's own flags (--cfg job, --help, --shell-completion ...) go to a real @hydra.main so they behave as Hydra's."""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from launcher.config.compose import CONF_DIR, normalize_overrides
from launcher.config.schema import register


def passthrough(overrides: list[str]) -> int:
    register()
    flags = [o for o in overrides if o.startswith("-")]
    values = [o for o in overrides if not o.startswith("-")]
    sys.argv = [sys.argv[0], *flags, *normalize_overrides(values)]

    @hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
    def _app(cfg: DictConfig) -> None:
        """Never called: each of these flags prints (config, help, completion) and exits before a task runs."""

    _app()
    return 0
