"""Bring your own script, the pure part: which API a script uses, what the launcher adds to its arguments, the
conflicts caught before launch, the files rendered for it (golden), and how a rank finds its resume point."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.backends.hostfile import hostfile_spec
from launcher.backends.local import local_spec
from launcher.checkpoint.store import latest_complete_any
from launcher.config.compose import compose
from launcher.errors import LauncherError
from launcher.plan.hardware import Hardware
from launcher.plan.resolve import resolve
from launcher.render.deepspeed import render_ds_config
from launcher.render.env import rank_env
from launcher.render.launch import render_launch_sh
from launcher.render.accelerate import parallelism_env
from launcher.script.checks import (SP_MINIMUM, check_accelerate_installed, check_plan,
                                    check_sequence_parallel_support)
from launcher.script.launch import (choose_api, detect_api, flag_values, join_module_word, load_script, prepare_launch,
                                    script_argv)
from launcher.script.entry import FORWARDED, main as entry_main, resume_args, run_rank, split_settings
from tests.conftest import REPO, check_golden, wait_for

CPU = Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64")
H200x2 = Hardware("cuda", 2, "NVIDIA H200", 139.8, "9.0", True, 32, 256.0, "x86_64")
TRAINER = "from transformers import Trainer, TrainingArguments\nargs = TrainingArguments()\n"
ACCELERATE = "import accelerate\nacc = accelerate.Accelerator()\n"


def plan_for(*overrides: str, hw: Hardware = CPU):
    cfg, _ = compose(list(overrides))
    return resolve(cfg, hw, run_dir="/runs/x", run_name="x")


def error_text(excinfo: pytest.ExceptionInfo[LauncherError]) -> str:
    return " ".join(excinfo.value.paragraph().split())


@pytest.mark.parametrize("source, api, why", [
    (TRAINER, "hf_trainer", "line 1 uses Trainer"),
    (ACCELERATE, "accelerate", "line 2 uses Accelerator"),
    ("import deepspeed\nengine = deepspeed.initialize()\n", "plain", "neither"),
    (ACCELERATE + TRAINER, "hf_trainer", "line 3 uses Trainer"),  # a Trainer script may touch accelerate too
])
def test_auto_detects_the_api_from_the_names_the_script_uses(source, api, why):
    chosen, reason = detect_api(source, "train.py")
    assert chosen == api and why in reason


def test_an_explicit_api_overrides_detection_and_a_bad_one_lists_the_choices():
    assert choose_api("plain", TRAINER, "t.py") == ("plain", "as asked")
    assert choose_api("auto", TRAINER, "t.py")[1].startswith("auto: line 1 uses Trainer")
    with pytest.raises(LauncherError) as e:
        choose_api("deepspeed", TRAINER, "t.py")
    assert "script_api='deepspeed'" in error_text(e) and "auto, hf_trainer, accelerate, plain" in error_text(e)


def test_a_script_that_does_not_parse_names_the_line():
    with pytest.raises(LauncherError) as e:
        detect_api("def f(:\n", "bad.py")
    assert "does not parse" in error_text(e) and "line 1" in error_text(e) and "script_api=" in error_text(e)


def test_module_scripts_and_unquoted_dash_m():
    assert join_module_word(["+plan=zero3", "script=-m", "pkg.train", "run.name=a"]) == \
        ["+plan=zero3", "script_module=pkg.train", "run.name=a"]


def test_flag_values_reads_both_spellings_and_bare_flags():
    assert flag_values(["--per-device-train-batch-size", "4", "--bf16", "--lr=1e-4", "pos", "--x", "-1"]) == \
        {"per_device_train_batch_size": "4", "bf16": "", "lr": "1e-4", "x": "-1"}


def test_trainer_script_gets_the_plans_numbers_and_use_cpu_on_cpu():
    plan = plan_for("+plan=zero2")
    script = load_script("examples/train_trainer.py", "", "auto", ["--max_steps", "5", "--gradient_accumulation_steps",
                                                                     "2"], str(Path(__file__).parents[2]))
    argv = script_argv(script, plan, "/work")
    assert argv == ("--max_steps", "5", "--gradient_accumulation_steps", "2", "--deepspeed", "/runs/x/ds_config.json",
                    "--output_dir", "/runs/x/checkpoints", "--per_device_train_batch_size", "2", "--max_grad_norm",
                    "1.0", "--use_cpu")


def test_trainer_script_on_gpus_gets_bf16():
    argv = script_argv(load_script("examples/train_trainer.py", "", "hf_trainer", [], str(Path(__file__).parents[2])),
                       plan_for("+topo=multi_gpu", "topo.gpus_per_host=2", hw=H200x2), "/work")
    assert "--bf16" in argv and "--use_cpu" not in argv


@pytest.mark.parametrize("args, fragments", [
    (["--per_device_train_batch_size", "4"], ["train.micro_batch_size=2", "--per_device_train_batch_size 4",
                                              "disagrees with the plan's --per_device_train_batch_size 2",
                                              "set train.micro_batch_size=4"]),
    (["--gradient_accumulation_steps=4"], ["train.global_batch_size=8", "--gradient_accumulation_steps 4",
                                           "plan's --gradient_accumulation_steps 2", "set train.global_batch_size=16"]),
    (["--max_grad_norm", "0.5"], ["train.grad_clip=1.0", "--max_grad_norm 0.5", "set train.grad_clip=0.5"]),
    (["--deepspeed", "my_ds.json"], ["--deepspeed='my_ds.json'", "launcher passes --deepspeed /runs/x/ds_config.json"]),
    (["--output_dir", "out"], ["--output_dir='out'", "run.dir="]),
    (["--bf16"], ["train.precision='fp32'", "--bf16 true", "set train.precision=bf16"]),
])
def test_a_trainer_argument_that_disagrees_with_the_plan_names_both_values(args, fragments):
    script = load_script("examples/train_trainer.py", "", "hf_trainer", args, str(Path(__file__).parents[2]))
    with pytest.raises(LauncherError) as e:
        script_argv(script, plan_for("+plan=zero2"), "/work")
    for fragment in fragments:
        assert fragment in error_text(e)


def test_use_cpu_on_a_gpu_plan_is_refused():
    script = load_script("examples/train_trainer.py", "", "hf_trainer", ["--use_cpu"], str(Path(__file__).parents[2]))
    with pytest.raises(LauncherError) as e:
        script_argv(script, plan_for("+topo=multi_gpu", "topo.gpus_per_host=2", hw=H200x2), "/work")
    assert "topo.accelerator='cuda'" in error_text(e) and "drop --use_cpu" in error_text(e)


def test_agreeing_arguments_are_kept_once(tmp_path):
    script = load_script("examples/train_trainer.py", "", "hf_trainer", ["--per_device_train_batch_size", "2",
                         "--output_dir", "/runs/x/checkpoints"], str(Path(__file__).parents[2]))
    argv = script_argv(script, plan_for("+plan=zero2"), "/work")
    assert argv.count("--per_device_train_batch_size") == 1 and argv.count("--output_dir") == 1


def test_missing_script_not_python_and_unknown_module(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for path, problem in (("nope.py", "does not exist"), ("notes.txt", "is not a .py file")):
        with pytest.raises(LauncherError) as e:
            load_script(path, "", "auto", [], str(tmp_path))
        assert f"script='{path}'" in error_text(e) and problem in error_text(e)
    with pytest.raises(LauncherError) as e:
        load_script("-m no_such_pkg.train", "", "auto", [], str(tmp_path))
    assert "script_module='no_such_pkg.train'" in error_text(e) and "no such module" in error_text(e)
    with pytest.raises(LauncherError) as e:
        load_script("a.py", "pkg.b", "auto", [], str(tmp_path))
    assert "either script=FILE.py or script_module=pkg.module" in error_text(e)


def test_a_module_is_found_from_the_working_directory(tmp_path):
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "train.py").write_text(ACCELERATE)
    script = load_script("-m mypkg.train", "", "auto", ["--lr", "1"], str(tmp_path))
    assert (script.module, script.api, script.target) == ("mypkg.train", "accelerate", ("-m", "mypkg.train"))
    assert load_script("", "mypkg.train", "plain", [], str(tmp_path)).api == "plain"


def test_accelerate_missing_and_model_parallel_plans_are_refused():
    with pytest.raises(LauncherError) as e:
        check_accelerate_installed("accelerate", installed=False, python="/venv/bin/python")
    assert "accelerate is not installed for /venv/bin/python" in error_text(e) and "pip install accelerate" in \
        error_text(e)
    check_accelerate_installed("plain", installed=False, python="p")
    with pytest.raises(LauncherError) as e:
        check_plan(plan_for("+topo=multi_gpu", "topo.gpus_per_host=2", "+plan=tp", hw=H200x2), "hf_trainer")
    assert "plan.tp=2" in error_text(e) and "+plan=zero2" in error_text(e)


@pytest.mark.parametrize("api", ["hf_trainer", "accelerate", "plain"])
def test_ds_config_has_no_auto_and_leaves_the_optimizer_to_trainer_and_accelerate_scripts(api):
    plan = plan_for("+plan=zero3")
    source = {"hf_trainer": "examples/train_trainer.py", "accelerate": "examples/train_accelerate.py",
              "plain": "examples/train_deepspeed.py"}[api]
    launch = prepare_launch(load_script(source, "", "auto", [], str(Path(__file__).parents[2])), plan, "/work", "", 0)
    assert launch.script.api == api
    ds = launch.ds_config(render_ds_config(plan))
    assert '"auto"' not in json.dumps(ds) and ("optimizer" in ds) == (api == "plain")
    assert ds["zero_optimization"]["stage"] == 3


def test_accelerate_config_and_launch_sh_match_golden():
    repo = str(Path(__file__).parents[2])
    accelerate = load_script("examples/train_accelerate.py", "", "auto", ["--max_steps", "20"], repo)
    accelerate = accelerate.__class__(path="/work/examples/train_accelerate.py", args=accelerate.args,
                                      api=accelerate.api)
    local = plan_for("+plan=zero2")
    launch = prepare_launch(accelerate, local, "/work", "", 0)
    check_golden("accelerate/local-cpu.yaml", launch.files["accelerate_config.yaml"])
    spec = local_spec(local, "python3", 0, rank_env(local, {}), "/work", "torchrun", launch.program)
    check_golden("launch/script-accelerate-local-cpu.sh", render_launch_sh(spec, "x"))

    dual = plan_for("+topo=dual_pgx", "+plan=zero3", hw=H200x2)
    launch = prepare_launch(accelerate, dual, "/work", "192.168.100.10", 0)
    check_golden("accelerate/dual_pgx-zero3.yaml", launch.files["accelerate_config.yaml"])
    spec, _ = hostfile_spec(dual, "python3", "192.168.100.10", 0, rank_env(dual, {}), "/work", {},
                            launch.program)
    check_golden("launch/script-accelerate-dual_pgx.sh", render_launch_sh(spec, "x"))

    trainer = load_script("examples/train_trainer.py", "", "auto", ["--max_steps", "20"], repo)
    trainer = trainer.__class__(path="/work/examples/train_trainer.py", args=trainer.args, api=trainer.api)
    launch = prepare_launch(trainer, local, "/work", "", 0)
    spec = local_spec(local, "python3", 0, rank_env(local, {}), "/work", "torchrun", launch.program)
    check_golden("launch/script-trainer-local-cpu.sh", render_launch_sh(spec, "x"))


def _launch(example: str, plan):
    script = load_script(f"examples/{example}", "", "auto", [], str(Path(__file__).parents[2]))
    return prepare_launch(script, plan, "/work", "", 0)


@pytest.mark.parametrize("procs, dp", [(2, 1), (4, 2)])
def test_trainer_script_under_sp_gets_accelerates_parallelism_config_and_a_ds_config_the_trainer_accepts(procs, dp):
    """The Trainer builds its Accelerator from accelerate's PARALLELISM_CONFIG_* variables (the entry sets them from
    its NAME=VALUE words); its DeepSpeed check would count the sp ranks as data parallel in train_batch_size, so the
    JSON leaves that to DeepSpeed, which derives micro x accumulation x dp."""
    plan = plan_for("+plan=sp", "plan.sp=2", f"topo.cpu_procs_per_host={procs}")
    launch = _launch("train_trainer.py", plan)
    args = launch.program.args
    settings = dict(word.split("=", 1) for word in args[3:args.index("--")])
    assert args[:3] == ("rank", "/runs/x", "hf_trainer") and settings == parallelism_env(plan) == {
        "ACCELERATE_USE_PARALLELISM_CONFIG": "true", "PARALLELISM_CONFIG_DP_REPLICATE_SIZE": str(dp),
        "PARALLELISM_CONFIG_SP_SIZE": "2", "PARALLELISM_CONFIG_SP_BACKEND": "deepspeed",
        "PARALLELISM_CONFIG_SP_SEQ_LENGTH_IS_VARIABLE": "true", "PARALLELISM_CONFIG_SP_ATTN_IMPLEMENTATION": "sdpa"}
    ds = launch.ds_config(render_ds_config(plan))
    assert ds["sequence_parallel_size"] == 2 and "train_batch_size" not in ds and "optimizer" not in ds
    assert ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * dp == plan.global_batch_size
    assert "--gradient_accumulation_steps" in args and args[args.index("--gradient_accumulation_steps") + 1] == \
        str(ds["gradient_accumulation_steps"])


def test_without_sp_a_script_gets_no_parallelism_config():
    plan = plan_for("+plan=zero3")
    assert parallelism_env(plan) == {} and _launch("train_trainer.py", plan).program.args[3] == "--"
    assert "parallelism_config" not in _launch("train_accelerate.py", plan).files["accelerate_config.yaml"]


def test_accelerate_launch_reads_the_rendered_sequence_parallel_section_into_the_trainers_variables(tmp_path):
    """What the installed accelerate makes of accelerate_config.yaml (its own parser and environment builder) is what a
    Trainer script gets directly; the JSON keeps train_batch_size (accelerate sets it from dp_replicate at prepare)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    plan = plan_for("+plan=sp", "plan.sp=2", "topo.cpu_procs_per_host=4")
    launch = _launch("train_accelerate.py", plan)
    assert "rank /runs/x accelerate --" in " ".join(launch.program.args)  # the yaml carries it, not the entry
    config = tmp_path / "accelerate_config.yaml"
    config.write_text(launch.files["accelerate_config.yaml"])
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(
        ["--config_file", str(config), "--machine_rank", "0", "train.py"]))
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command sets it
    _, env = prepare_deepspeed_cmd_env(args)
    assert {k: env[k].lower() for k in parallelism_env(plan)} == parallelism_env(plan)
    assert env["PARALLELISM_CONFIG_DP_REPLICATE_SIZE"] == "2" and env["PARALLELISM_CONFIG_SP_SIZE"] == "2"
    assert launch.ds_config(render_ds_config(plan))["train_batch_size"] == plan.global_batch_size == 8


def test_a_plain_script_under_sp_is_refused_with_what_works_instead():
    plan = plan_for("+plan=sp", "plan.sp=2")
    with pytest.raises(LauncherError) as e:
        check_plan(plan, "plain")
    text = error_text(e)
    for fragment in ("plan.sp=2 cannot be used", "cannot get Ulysses sequence parallel from ds_config.json",
                     "register_with_transformers", "mpu", "UlyssesSPDataLoaderAdapter",
                     "the built-in job (no script=) with +plan=sp", "script_api=hf_trainer|accelerate"):
        assert fragment in text, text
    check_plan(plan, "hf_trainer")
    check_plan(plan, "accelerate")


def test_sequence_parallel_needs_the_accelerate_and_transformers_that_carry_it():
    plan = plan_for("+plan=sp", "plan.sp=2")
    recent = {"accelerate": "1.16.0", "transformers": "5.25.0", "deepspeed": "0.19.8"}
    check_sequence_parallel_support(plan, "hf_trainer", recent)
    check_sequence_parallel_support(plan, "accelerate", {**recent, "transformers": "4.57.1"})  # its own model code
    check_sequence_parallel_support(plan_for("+plan=zero3"), "hf_trainer", {})  # no sp: nothing to check
    with pytest.raises(LauncherError) as e:
        check_sequence_parallel_support(plan, "hf_trainer", {**recent, "accelerate": "1.11.0", "transformers": ""})
    text = error_text(e)
    assert "plan.sp=2" in text and "installed: accelerate 1.11.0, transformers is missing" in text
    assert "pip install 'accelerate>=1.12.0' 'transformers>=5.0.0' 'deepspeed>=0.18.2'" in text
    assert set(SP_MINIMUM) == {"accelerate", "transformers", "deepspeed"}


def test_the_entry_sets_its_name_value_words_for_the_script_only(tmp_path):
    assert split_settings(["A=1", "B=x=y", "--", "t.py", "--", "k"]) == ({"A": "1", "B": "x=y"}, ["t.py", "--", "k"])
    assert split_settings(["--", "-m", "pkg", "--lr=1"]) == ({}, ["-m", "pkg", "--lr=1"])
    assert split_settings(["t.py", "--x=1", "--", "y"]) == ({}, ["t.py", "--x=1", "--", "y"])
    script = tmp_path / "show.py"
    script.write_text("import os\nprint('sp', os.environ.get('PARALLELISM_CONFIG_SP_SIZE'))\n")
    assert entry_main(["rank", str(tmp_path / "run"), "hf_trainer", "PARALLELISM_CONFIG_SP_SIZE=2", "--",
                       str(script)]) == 0
    assert "sp 2" in (tmp_path / "run" / "logs" / "rank0.log").read_text()
    assert "PARALLELISM_CONFIG_SP_SIZE" not in os.environ


def _hf_checkpoint(root: Path, step: int) -> Path:
    """The files a Trainer writes that matter here: weights (safetensors), a torch zip, the state last."""
    import torch
    from safetensors.torch import save_file

    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.zeros(64)}, str(path / "model.safetensors"))
    torch.save({"step": step}, path / "rng_state_0.pth")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_newest_complete_trainer_checkpoint_skipping_partial_and_truncated_ones(tmp_path):
    root = tmp_path / "checkpoints"
    _hf_checkpoint(root, 2)
    truncated_weights = _hf_checkpoint(root, 4)
    with open(truncated_weights / "model.safetensors", "r+b") as f:
        f.truncate(100)
    truncated_zip = _hf_checkpoint(root, 6)
    with open(truncated_zip / "rng_state_0.pth", "r+b") as f:
        f.truncate(40)
    (_hf_checkpoint(root, 8) / "trainer_state.json").unlink()  # killed before the Trainer wrote its state
    warnings: list[str] = []
    found = latest_complete_any(root, warn=warnings.append)
    assert found is not None and found.path.name == "checkpoint-2" and found.global_step == 2
    assert [w.split(": ", 2)[2] for w in warnings] == [
        "no trainer_state.json (the save was interrupted)",
        "file rng_state_0.pth is truncated (its zip directory is missing)",
        "file model.safetensors is truncated (100 of 328 bytes)",
    ]
    assert "checkpoint-8" in warnings[0]


def test_a_rank_resumes_reports_its_failure_and_passes_the_environment(tmp_path):
    """launcher.script.entry for real (a tiny script, no torch): output in logs/rank1.log, the resume point on the command
    line and in LAUNCHER_RESUME_FROM, and a failure report naming the rank and the last lines."""
    run = tmp_path / "run"
    ckpt = _hf_checkpoint(run / "checkpoints", 3)
    script = tmp_path / "train.py"
    script.write_text("import os, sys\nprint('args', sys.argv[1:])\nprint('resume', os.environ['LAUNCHER_RESUME_FROM'])"
                      "\nprint('boom', file=sys.stderr)\nsys.exit(3)\n")
    env = {"RANK": "1", "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"}
    before = [signal.getsignal(s) for s in FORWARDED]
    code = run_rank(run, "hf_trainer", [str(script), "--max_steps", "5"], env)
    assert code == 3
    assert [signal.getsignal(s) for s in FORWARDED] == before  # pytest's own handlers are back
    log = (run / "logs" / "rank1.log").read_text()
    assert f"args ['--max_steps', '5', '--resume_from_checkpoint', '{ckpt}']" in log and f"resume {ckpt}" in log
    report = json.loads((run / "user_error.rank1.json").read_text())
    assert report["rank"] == 1 and report["restartable"]
    assert "rank 1 (on" in report["paragraph"] and "exited with code 3" in report["paragraph"]
    assert report["paragraph"].rstrip().endswith("boom")
    assert resume_args("hf_trainer", ["--resume_from_checkpoint", "x"], latest_complete_any(run / "checkpoints")) == []
    assert resume_args("plain", [], latest_complete_any(run / "checkpoints")) == []
    assert sys.executable  # the script ran under this interpreter


def test_a_script_that_leaves_its_gloo_group_alive_gets_it_destroyed_at_exit(tmp_path):
    """Gloo can abort a rank that exits with its group alive (SIGABRT in interpreter shutdown, seen in this suite with
    a Trainer script). The entry's sitecustomize destroys the group in an exit hook, and still imports the user's own
    sitecustomize that it shadows."""
    run, script, user_site = tmp_path / "run", tmp_path / "train.py", tmp_path / "site"
    user_site.mkdir()
    (user_site / "sitecustomize.py").write_text("print('user sitecustomize ran', flush=True)\n")
    script.write_text(
        "import torch.distributed as dist\n"
        f"dist.init_process_group('gloo', init_method='file://{tmp_path}/store', rank=0, world_size=1)\n"
        "original = dist.destroy_process_group\n"
        "def destroy(*a):\n    print('destroyed', dist.get_backend(), flush=True)\n    original(*a)\n"
        "dist.destroy_process_group = destroy\n"
        "dist.all_reduce(__import__('torch').ones(1))\n"
        "print('script done', flush=True)\n")
    env = {"RANK": "0", "PATH": os.environ["PATH"], "PYTHONPATH": str(user_site)}
    assert run_rank(run, "plain", [str(script)], env) == 0
    lines = (run / "logs" / "rank0.log").read_text().splitlines()
    assert lines[0] == "user sitecustomize ran" and lines[-2:] == ["script done", "destroyed gloo"]


def test_a_script_gets_a_signal_its_launcher_ignores_with_the_default_action(tmp_path):
    """job.sbatch's step ignores SIGUSR1 for DeepSpeed's launcher, and children inherit that. The entry starts the
    script with the default action, so a script that does not catch Slurm's pre-timeout signal stops (the job is then
    requeued and resumes) instead of training on as if no signal had come."""
    run, script = tmp_path / "run", tmp_path / "train.py"
    script.write_text("import time\nprint('training', flush=True)\ntime.sleep(120)\n")
    env = {"RANK": "0", "PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    entry = subprocess.Popen([sys.executable, "-m", "launcher.script.entry", "rank", str(run), "plain", "--",
                              str(script)], env=env, stdout=subprocess.DEVNULL,
                             preexec_fn=lambda: signal.signal(signal.SIGUSR1, signal.SIG_IGN))  # as the step does
    log = run / "logs" / "rank0.log"
    try:
        assert wait_for(lambda: log.exists() and "training" in log.read_text(), entry, timeout=60)
        entry.send_signal(signal.SIGUSR1)  # srun passes it to every process of the step; the entry forwards it
        assert entry.wait(timeout=30) == 128 + signal.SIGUSR1
    finally:
        entry.kill()
        entry.wait()
    assert not list(run.glob("user_error*.json"))  # stopped from outside: not reported as the script's own failure


def test_arguments_after_dashdash_without_a_script_are_refused():
    from launcher.script.from_config import script_from_config as script_launch

    cfg, _ = compose([])
    with pytest.raises(LauncherError) as e:
        script_launch(cfg, plan_for(), ["--max_steps", "5"], "/work")
    assert "the arguments after -- (--max_steps 5) go to a user script" in error_text(e)
    assert script_launch(cfg, plan_for(), [], "/work") is None
