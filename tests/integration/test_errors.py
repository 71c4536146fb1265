"""Bad input as a user types it: one paragraph naming the field, the value and a fix; exit code 2; no traceback;
nothing already in the run dir touched."""
from __future__ import annotations

import json

import pytest

from tests.conftest import console_script, run_launcher

pytestmark = pytest.mark.integration


def assert_user_error(result, *fragments: str) -> str:
    err = result.stderr
    assert result.returncode == 2, result.stdout[-2000:] + err[-2000:]
    assert "Traceback" not in err and "Traceback" not in result.stdout
    paragraph = " ".join(err.split())
    for fragment in fragments:
        assert fragment in paragraph, paragraph
    return paragraph


def test_unknown_preset_lists_the_presets():
    assert_user_error(run_launcher("+plan=zero4"), "plan='zero4'", "use one of auto, ddp, pp, sp, tp, zero1, zero2, zero3, zero3_offload")


def test_unknown_field_lists_the_fields_of_its_group():
    assert_user_error(run_launcher("train.batch_size=8"), "train.batch_size='8'", "train has: global_batch_size")


def test_indivisible_global_batch(tmp_path):
    assert_user_error(run_launcher("train.global_batch_size=7", f"run.dir={tmp_path}/r"),
                      "train.global_batch_size=7", "7 sequences cannot be shared evenly by 2 data-parallel ranks",
                      "train.global_batch_size=6 or 8")
    assert_user_error(run_launcher("train.global_batch_size=6", "train.micro_batch_size=2", f"run.dir={tmp_path}/r"),
                      "train.global_batch_size=6", "multiple of micro batch 2 x data-parallel size 2 = 4")


def test_more_gpus_than_the_host_has(tmp_path):
    assert_user_error(run_launcher("+topo=multi_gpu", "train.global_batch_size=16", f"run.dir={tmp_path}/r"),
                      "topo.gpus_per_host=8", "needs 8 GPUs on this host, which has 0", "run.dry_run=true",
                      "topo.cpu_procs_per_host=N", "on +topo=local")


def test_gpus_per_host_on_a_machine_without_gpus_points_at_cpu_procs_per_host(tmp_path):
    result = run_launcher("topo.gpus_per_host=4", f"run.dir={tmp_path}/r")
    assert_user_error(result, "topo.gpus_per_host=4", "this machine has no GPU",
                      "topo.cpu_procs_per_host=N (default 2) instead of topo.gpus_per_host")
    assert "+topo=local" not in result.stderr  # the topology it already has


def test_missing_model_path(tmp_path):
    assert_user_error(run_launcher(f"model.path={tmp_path}/no-such-model", f"run.dir={tmp_path}/r"),
                      "model.path=", "no-such-model does not exist", "config.json")


def test_missing_data_file(tmp_path):
    assert_user_error(run_launcher("data=alpaca", f"data.path={tmp_path}/nope.jsonl", f"run.dir={tmp_path}/r"),
                      "data.path=", "does not exist")


def test_a_data_file_with_no_usable_row_names_the_row_and_the_reason(tmp_path):
    """A bad row among good ones is dropped and counted (tests/unit/test_data_tools.py); a file of nothing but bad
    rows is refused before any rank starts."""
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps({"instruction": "c"}) + "\n")
    assert_user_error(run_launcher("data=alpaca", f"data.path={data}", f"run.dir={tmp_path}/r"),
                      "its one row is not usable: 1 missing 'output' (row 1)")


def test_qlora_without_cuda(tmp_path):
    assert_user_error(run_launcher("method=qlora", f"run.dir={tmp_path}/r"), "method='qlora'", "use method=lora")


def test_bad_input_leaves_an_existing_run_dir_untouched(tmp_path):
    run_dir = tmp_path / "r"
    assert run_launcher(f"run.dir={run_dir}", "run.dry_run=true").returncode == 0
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert_user_error(run_launcher(f"run.dir={run_dir}", "train.global_batch_size=7"), "train.global_batch_size=7")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_debug_adds_the_traceback(tmp_path):
    result = run_launcher("train.global_batch_size=7", "run.debug=true", f"run.dir={tmp_path}/r")
    assert result.returncode == 2 and "Traceback" in result.stderr


def test_dry_run_renders_everything_and_launches_nothing(tmp_path):
    run_dir = tmp_path / "r"
    result = run_launcher("+plan=zero3", "run.dry_run=true", f"run.dir={run_dir}")
    assert result.returncode == 0 and "nothing launched" in result.stdout
    assert sorted(p.name for p in run_dir.iterdir()) == ["ds_config.json", "launch.sh", "plan.json", "resolved.yaml"]
    assert json.loads((run_dir / "ds_config.json").read_text())["zero_optimization"]["stage"] == 3


def test_changed_artifacts_are_kept_in_history(tmp_path):
    run_dir = tmp_path / "r"
    assert run_launcher("run.dry_run=true", f"run.dir={run_dir}").returncode == 0
    old = (run_dir / "ds_config.json").read_text()
    assert run_launcher("run.dry_run=true", "train.lr=1e-4", f"run.dir={run_dir}").returncode == 0
    kept = list((run_dir / "history").rglob("ds_config.json"))
    assert len(kept) == 1 and kept[0].read_text() == old
    assert json.loads((run_dir / "ds_config.json").read_text())["optimizer"]["params"]["lr"] == 1e-4


def test_console_script_does_what_python_m_launcher_does(tmp_path):
    import subprocess

    from tests.conftest import launcher_env

    exe = console_script()
    via_script = subprocess.run([exe, "run.dry_run=true", f"run.dir={tmp_path}/a"], capture_output=True, text=True,
                                env=launcher_env(), cwd=tmp_path)
    via_module = run_launcher("run.dry_run=true", f"run.dir={tmp_path}/b")
    assert via_script.returncode == via_module.returncode == 0
    for name in ("plan.json", "ds_config.json"):
        a = (tmp_path / "a" / name).read_text().replace(str(tmp_path / "a"), "RUN")
        b = (tmp_path / "b" / name).read_text().replace(str(tmp_path / "b"), "RUN")
        assert a == b
