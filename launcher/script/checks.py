"""The plans and packages a user's script can run under, checked at the entry: tensor and pipeline parallel need
the model built for them, sequence parallel reaches a script only through accelerate's parallelism config (so not a
plain DeepSpeed loop, and not with packages older than that config)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.errors import LauncherError

if TYPE_CHECKING:
    from launcher.plan.types import Plan


def check_accelerate_installed(api: str, installed: bool, python: str) -> None:
    if api == "accelerate" and not installed:
        raise LauncherError("script_api", "accelerate", "install it (pip install accelerate) or run the script with "
                            "script_api=plain", problem=f"accelerate is not installed for {python}")


def check_plan(plan: Plan, api: str) -> None:
    """User scripts get data parallel with ZeRO, and sequence parallel through accelerate: tensor and pipeline
    parallel need the model built for them."""
    for name in ("tp", "pp"):
        if getattr(plan, name) > 1:
            raise LauncherError(f"plan.{name}", getattr(plan, name), "use a ZeRO plan (+plan=zero2, +plan=zero3) for a "
                                "script, or the built-in job (no script=) for tensor or pipeline parallel",
                                problem="a user script builds its own model; the launcher cannot split it into shards "
                                "or stages")
    if plan.sp > 1 and api == "plain":
        raise LauncherError("plan.sp", plan.sp, "run the built-in job (no script=) with +plan=sp, or a transformers "
                            "Trainer or accelerate script (script_api=hf_trainer|accelerate), which gets sequence "
                            "parallel from the launcher through accelerate's parallelism config; or plan.sp=1 for this "
                            "script", problem="a plain DeepSpeed script cannot get Ulysses sequence parallel from "
                            "ds_config.json: its sequence_parallel_size only sizes the batch, while the script itself "
                            "would have to register DeepSpeed's attention with transformers "
                            "(UlyssesSPAttentionHF.register_with_transformers), pass the mpu it returns to "
                            "deepspeed.initialize and split every batch over the sp ranks (UlyssesSPDataLoaderAdapter)")


# Where Ulysses sequence parallel arrived: accelerate's ParallelismConfig(sp_backend="deepspeed") (accelerate #3817),
# the Trainer's batch splitting and loss (transformers #41832), and accelerate's own floor for DeepSpeed.
SP_MINIMUM = {"accelerate": "1.12.0", "transformers": "5.0.0", "deepspeed": "0.18.2"}


def check_sequence_parallel_support(plan: Plan, api: str, versions: dict[str, str]) -> None:
    """`versions`: the installed version of each package in SP_MINIMUM ("" when missing). An older one would ignore
    the parallelism config and train every rank on whole sequences with the wrong batch arithmetic."""
    if plan.sp <= 1 or api not in ("hf_trainer", "accelerate"):
        return
    from packaging.version import Version

    needed = [p for p in SP_MINIMUM if p != "transformers" or api == "hf_trainer"]
    old = [f"{p} {versions.get(p) or 'is missing'}" for p in needed
           if not versions.get(p) or Version(versions[p]) < Version(SP_MINIMUM[p])]
    if old:
        raise LauncherError("plan.sp", plan.sp, "upgrade: pip install " + " ".join(
            f"'{p}>={SP_MINIMUM[p]}'" for p in needed), problem=f"a {api} script gets sequence parallel through "
            f"accelerate's parallelism config, which needs {', '.join(f'{p}>={SP_MINIMUM[p]}' for p in needed)}; "
            f"installed: {', '.join(old)}")
