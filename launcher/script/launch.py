"""Bring your own training script: which API it uses, what the launcher adds to its command line, and the checks that
catch a conflicting argument before anything starts.

Pure except `load_script`, which reads the script's source at the entry. The launcher owns the batch geometry, the
ZeRO stage, precision, gradient clipping and where checkpoints go; the script owns everything else (model, data,
learning rate, schedule, steps). Trainer and accelerate scripts build their own optimizer, so the DeepSpeed JSON they
get has no optimizer section: no learning rate in it can disagree with the script's `--learning_rate`.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.errors import LauncherError
from launcher.render.launch import RankProgram

if TYPE_CHECKING:
    from launcher.plan.types import Plan

APIS = ("hf_trainer", "accelerate", "plain")
TRAINER_NAMES = ("TrainingArguments", "Trainer", "Seq2SeqTrainer", "Seq2SeqTrainingArguments", "SFTTrainer",
                 "SFTConfig")
ACCELERATE_NAMES = ("Accelerator",)
ENTRY_MODULE = "launcher.script.entry"
TRUE = ("", "true", "1", "yes")  # "" is a bare `--flag`


@dataclass(frozen=True)
class Script:
    """The user's script: a .py file or a module, its arguments (everything after `--`) and the API it uses."""

    path: str = ""  # absolute path of a .py file
    module: str = ""  # or a module, run as python -m
    args: tuple[str, ...] = ()
    api: str = "plain"
    reason: str = ""  # why this API: printed at launch

    @property
    def target(self) -> tuple[str, ...]:
        """What follows `python` to run it."""
        return ("-m", self.module) if self.module else (self.path,)

    @property
    def name(self) -> str:
        return f"-m {self.module}" if self.module else self.path


def join_module_word(overrides: list[str]) -> list[str]:
    """`script=-m pkg.mod` typed without quotes arrives as two words: make it one override."""
    out: list[str] = []
    for word in overrides:
        if out and out[-1].lstrip("+") == "script=-m" and "=" not in word:
            out[-1] = f"script_module={word}"
        else:
            out.append(word)
    return out


def detect_api(source: str, filename: str) -> tuple[str, str]:
    """(api, reason) from the names a script uses: a Trainer or TrainingArguments -> hf_trainer (a Trainer script may
    also touch accelerate), an Accelerator -> accelerate, neither -> plain."""
    try:
        tree = ast.parse(source, filename=filename)
    except SyntaxError as err:
        raise LauncherError("script", filename, "fix the script, or say which API it uses with "
                            "script_api=hf_trainer|accelerate|plain", problem=f"it does not parse: {err.msg} at line "
                            f"{err.lineno}") from err
    first: dict[str, int] = {}
    for node in ast.walk(tree):
        names = [node.id] if isinstance(node, ast.Name) else [node.attr] if isinstance(node, ast.Attribute) else \
            [a.name for a in node.names] if isinstance(node, ast.ImportFrom) else []
        for name in names:
            first[name] = min(first.get(name, 10**9), getattr(node, "lineno", 0))
    for api, wanted in (("hf_trainer", TRAINER_NAMES), ("accelerate", ACCELERATE_NAMES)):
        used = sorted((first[n], n) for n in wanted if n in first)
        if used:
            return api, f"line {used[0][0]} uses {used[0][1]}"
    return "plain", "it uses neither transformers' Trainer/TrainingArguments nor accelerate's Accelerator"


def choose_api(asked: str, source: str, filename: str) -> tuple[str, str]:
    if asked == "auto":
        api, why = detect_api(source, filename)
        return api, f"auto: {why}; override with script_api="
    if asked not in APIS:
        raise LauncherError("script_api", asked, f"use one of: auto, {', '.join(APIS)}")
    return asked, "as asked"


def flag_values(args: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`--key value`, `--key=value` and bare `--flag` ("") of an argument list, keys with `-` read as `_`."""
    found: dict[str, str] = {}
    for i, arg in enumerate(args):
        if not arg.startswith("--") or arg == "--":
            continue
        key, eq, value = arg[2:].partition("=")
        if not eq:
            following = args[i + 1] if i + 1 < len(args) else ""
            value = following if following and not following.startswith("--") else ""
        found[key.replace("-", "_")] = value
    return found


def trainer_args(plan: Plan) -> dict[str, str]:
    """What a Trainer script gets from the plan ("" = a bare flag), in the order it is appended."""
    run = plan.run_dir
    args = {"deepspeed": f"{run}/ds_config.json", "output_dir": f"{run}/checkpoints",
            "per_device_train_batch_size": str(plan.micro_batch_size),
            "gradient_accumulation_steps": str(plan.grad_accum), "max_grad_norm": str(plan.train.grad_clip)}
    if plan.precision in ("bf16", "fp16"):
        args[plan.precision] = ""
    if plan.accelerator == "cpu":
        args["use_cpu"] = ""  # without it the Trainer counts a world size of 1 on a CPU-only machine
    return args


def check_trainer_args(user: dict[str, str], plan: Plan, cwd: str) -> None:
    """A launcher-set argument the user also passed must agree; each mismatch names both values and the fix."""
    ours = trainer_args(plan)
    numbers = {"per_device_train_batch_size": ("train.micro_batch_size", plan.micro_batch_size, lambda v: v),
               "gradient_accumulation_steps": ("train.global_batch_size", plan.global_batch_size,
                                               lambda v: v * plan.micro_batch_size * plan.dp),
               "max_grad_norm": ("train.grad_clip", plan.train.grad_clip, lambda v: v)}
    for key, (field_name, value, fix) in numbers.items():
        if key in user and not _same_number(user[key], ours[key]):
            given = _number(user[key], key)
            raise LauncherError(field_name, value, f"drop --{key} from the script's arguments (the launcher passes "
                                f"--{key} {ours[key]}), or set {field_name}={_fmt(fix(given))} so they agree",
                                problem=f"the script argument --{key} {user[key]} disagrees with the plan's "
                                f"--{key} {ours[key]}")
    for key, where in (("deepspeed", "the DeepSpeed config is rendered from the plan (+plan=...)"),
                       ("output_dir", "checkpoints go to the run dir so that a rerun resumes (choose it with "
                                      "run.dir=)")):
        if key in user and _abs(user[key], cwd) != ours[key]:
            raise LauncherError(f"--{key}", user[key], f"drop --{key} from the script's arguments: {where}",
                                problem=f"the launcher passes --{key} {ours[key]}")
    for flag in ("bf16", "fp16"):
        if flag in user and (user[flag].lower() in TRUE) != (plan.precision == flag):
            raise LauncherError("train.precision", plan.precision, f"drop --{flag} from the script's arguments, or set "
                                f"train.precision={flag if user[flag].lower() in TRUE else 'fp32'}",
                                problem=f"the script argument --{flag} {user[flag] or 'true'} disagrees with the "
                                "plan's "
                                "precision, and the Trainer refuses a DeepSpeed config that does not match it")
    if "use_cpu" in user and (user["use_cpu"].lower() in TRUE) != (plan.accelerator == "cpu"):
        raise LauncherError("topo.accelerator", plan.accelerator, "drop --use_cpu from the script's arguments: the "
                            "launcher passes it when the plan runs on CPU",
                            problem=f"the script argument --use_cpu {user['use_cpu'] or 'true'} disagrees with the "
                            "plan")


def script_argv(script: Script, plan: Plan, cwd: str) -> tuple[str, ...]:
    """The script's arguments as each rank gets them (the resume point is added at each start, see launcher.script.entry)."""
    if script.api != "hf_trainer":
        return script.args
    user = flag_values(script.args)
    check_trainer_args(user, plan, cwd)
    extra: list[str] = []
    for key, value in trainer_args(plan).items():
        if key not in user:
            extra += [f"--{key}", *([value] if value else [])]
    return (*script.args, *extra)


def rank_args(script: Script, plan: Plan, cwd: str) -> tuple[str, ...]:
    """Arguments of `python -m launcher.script.entry` on every rank: the variables it sets for the script come before
    the `--` (a Trainer script's parallelism config; an accelerate script gets its own from accelerate launch)."""
    from launcher.render.accelerate import parallelism_env  # not on every rank's start

    env = parallelism_env(plan) if script.api == "hf_trainer" else {}
    return ("rank", plan.run_dir, script.api, *(f"{k}={v}" for k, v in env.items()), "--", *script.target,
            *script_argv(script, plan, cwd))


@dataclass(frozen=True)
class ScriptLaunch:
    """A checked script made ready for the backends: what each rank runs and the files it adds to the run dir."""

    script: Script
    program: RankProgram
    files: dict[str, str]

    def ds_config(self, ds: dict[str, Any]) -> dict[str, Any]:
        return ds_config_for(ds, self.script.api)


def prepare_launch(script: Script, plan: Plan, cwd: str, master_addr: str, master_port: int) -> ScriptLaunch:
    """Conflicting arguments fail here, before anything is written. An accelerate script gets accelerate_config.yaml
    and one `accelerate launch` per node; the others run under the backend's usual per-node launcher."""
    args = rank_args(script, plan, cwd)
    if script.api != "accelerate":
        return ScriptLaunch(script, RankProgram(ENTRY_MODULE, args), {})
    from launcher.render.accelerate import render_accelerate_config  # not on every rank's start

    config = f"{plan.run_dir}/accelerate_config.yaml"
    addr = master_addr or (plan.hosts[0].rpartition("@")[2] if plan.backend == "hostfile" else "")
    text = render_accelerate_config(plan, f"{plan.run_dir}/ds_config.json", addr, master_port)
    return ScriptLaunch(script, RankProgram(ENTRY_MODULE, args, config), {"accelerate_config.yaml": text})


def ds_config_for(ds: dict[str, Any], api: str) -> dict[str, Any]:
    """Trainer and accelerate scripts create their optimizer from their own arguments; a plain DeepSpeed script gets
    the plan's (deepspeed.initialize builds it from the JSON). Under sequence parallel a Trainer's JSON has no
    train_batch_size: the Trainer would check it against micro x accumulation x world size, counting the sp ranks as
    data parallel; DeepSpeed derives it (micro x accumulation x dp) and the engine runs the plan's global batch.
    bf16's gradient check stays DeepSpeed's own: train.nonfinite=stop is the built-in loop's."""
    if "check_grad_overflow" in ds.get("bf16", {}):  # no launcher loop watches a script's loss: DeepSpeed's default
        ds = {**ds, "bf16": {k: v for k, v in ds["bf16"].items() if k != "check_grad_overflow"}}
    if api not in ("hf_trainer", "accelerate"):
        return ds
    dropped = {"optimizer"}
    if api == "hf_trainer" and ds.get("sequence_parallel_size", 1) > 1:
        dropped.add("train_batch_size")
    return {k: v for k, v in ds.items() if k not in dropped}


def load_script(path: str, module: str, api: str, args: list[str], cwd: str) -> Script:
    """Read the script (or find the module) and settle its API. Raises LauncherError for a missing file."""
    if path and module:
        raise LauncherError("script_module", module, "give either script=FILE.py or script_module=pkg.module")
    if path.startswith("-m ") or path == "-m":
        module = path[2:].strip()
        if not module:
            raise LauncherError("script", path, "name the module: script='-m pkg.module' or script_module=pkg.module")
        path = ""
    if module:
        source, filename = _module_source(module, cwd)
        full = ""
    else:
        full = str(Path(cwd, os.path.expanduser(path)).resolve())
        if not Path(full).is_file() or not full.endswith(".py"):
            what = "does not exist" if not Path(full).exists() else "is not a .py file"
            raise LauncherError("script", path, "give the path of a Python training script (relative to the current "
                                "directory), or script_module=pkg.module", problem=f"{full} {what}")
        source, filename = Path(full).read_text(errors="replace"), full
    chosen, why = choose_api(api, source, filename)
    return Script(path=full, module=module, args=tuple(args), api=chosen, reason=why)


def _module_source(module: str, cwd: str) -> tuple[str, str]:
    """`python -m` from cwd finds modules there first; a package runs its __main__."""
    sys.path.insert(0, cwd)
    try:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            spec = importlib.util.find_spec(f"{module}.__main__")
    except (ImportError, ValueError):
        spec = None
    finally:
        sys.path.remove(cwd)
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise LauncherError("script_module", module, f"give a module importable from {cwd} (python -m {module} must "
                            "work there), or script=path/to/train.py", problem="no such module")
    return Path(spec.origin).read_text(errors="replace"), spec.origin


def _number(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError as err:
        raise LauncherError(f"--{key}", text, "give a number") from err


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _abs(path: str, cwd: str) -> str:
    return str(Path(cwd, os.path.expanduser(path)).resolve())
