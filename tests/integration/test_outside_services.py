"""Outside services fail soft: a W&B server that never answers turns the run offline in seconds, a hub id that is
neither cached nor reachable is refused before any rank starts, and no secret's value lands in a file."""
from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import launcher_env, read_metrics, run_launcher

pytestmark = pytest.mark.integration
SECRETS = {"WANDB_API_KEY": "wandb-secret-value-7781", "HF_TOKEN": "hf-secret-value-5523"}
TOPO_SECRET = "topo-env-secret-value-9902"
JOB = ("train.max_steps=6",)


def assert_no_secret_in(run_dir, *outputs: str) -> None:
    values = [*SECRETS.values(), TOPO_SECRET]
    for f in run_dir.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            assert not any(v.encode() in data for v in values), f"a secret's value was written to {f}"
    assert not any(v in out for v in values for out in outputs), "a secret's value was printed"


def test_unreachable_wandb_trains_offline_with_one_line_and_no_secret_lands_in_any_file(tmp_path, trained_run):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # connections are accepted by the kernel and never answered
    env = {**launcher_env(), **SECRETS, "WANDB_BASE_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"}
    env.pop("WANDB_MODE")
    run_dir, dry_dir = tmp_path / "run", tmp_path / "dry"
    try:
        t0 = time.monotonic()
        result = run_launcher(f"run.dir={run_dir}", *JOB, f"+topo.env.MY_API_KEY={TOPO_SECRET}", env=env)
        took = time.monotonic() - t0
        dry = run_launcher(f"run.dir={dry_dir}", *JOB, f"+topo.env.MY_API_KEY={TOPO_SECRET}", "run.dry_run=true",
                           env=env)
    finally:
        silent.close()
    assert result.returncode == 0, result.stderr[-3000:]
    notice = [line for line in result.stdout.splitlines() if line.startswith("wandb: offline for this run")]
    assert len(notice) == 1 and "no answer from http://127.0.0.1:" in notice[0] and "wandb sync" in notice[0]
    assert "Weights & Biases: offline run in" in result.stdout and took < 90
    assert "Traceback" not in result.stdout + result.stderr
    _, offline_dir = trained_run(*JOB, "logging.wandb.mode=offline")  # the same job, wandb offline from the start
    assert [m["loss"] for m in read_metrics(run_dir)] == [m["loss"] for m in read_metrics(offline_dir)]
    assert (run_dir / "wandb").is_dir()
    assert dry.returncode == 0
    assert_no_secret_in(run_dir, result.stdout, result.stderr)
    assert_no_secret_in(dry_dir, dry.stdout, dry.stderr)
    assert "MY_API_KEY: <hidden>" in (run_dir / "resolved.yaml").read_text()


def test_an_offline_run_never_contacts_the_wandb_server(tmp_path):
    """logging.wandb.mode=offline with no WANDB_MODE in the environment: wandb's own usage analytics read the
    process-wide mode, not the run's, and would probe the server at exit. The server here is a socket that counts
    the connections it is offered."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    env = {**launcher_env(), "WANDB_BASE_URL": f"http://127.0.0.1:{server.getsockname()[1]}"}
    env.pop("WANDB_MODE")
    try:
        result = run_launcher(f"run.dir={tmp_path / 'run'}", "train.max_steps=2", "logging.wandb.mode=offline", env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Weights & Biases: offline run in" in result.stdout
        with pytest.raises(BlockingIOError):
            server.accept()[0].close()  # a connection offered would be waiting here
    finally:
        server.close()


def test_hub_id_missing_from_an_empty_offline_cache_is_refused_in_seconds_before_any_rank(tmp_path):
    env = {**launcher_env(), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    result = run_launcher("model.path=example-org/not-cached-model", f"run.dir={run_dir}", env=env)
    assert result.returncode == 2 and time.monotonic() - t0 < 30
    assert "model.path='example-org/not-cached-model'" in result.stderr
    assert "not in the local cache" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert "Traceback" not in result.stderr and not run_dir.exists()
