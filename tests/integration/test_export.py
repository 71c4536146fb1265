"""Export to a Hugging Face directory: loads with transformers (or peft) and gives the logits the engine gave."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO, launcher_env

pytestmark = pytest.mark.integration
STEPS = ("train.max_steps=12", "train.save_every=6")


def export(run_dir, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "launcher.export", str(run_dir), *args], cwd=REPO,
                          env=launcher_env(), capture_output=True, text=True, timeout=300)


def engine_probe(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "global_step12" / "probe.pt", weights_only=False)


@pytest.mark.parametrize("job", [("+plan=zero2",), ("+plan=zero3",), ("method=lora",)], ids=["zero2", "zero3", "lora"])
def test_export_loads_with_transformers_and_matches_engine_logits(trained_run, job, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, run_dir = trained_run(*job, *STEPS)
    assert result.returncode == 0
    done = export(run_dir, "--out", str(tmp_path / "hf"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "logits match the engine's" in done.stdout
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    probe = engine_probe(run_dir)
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits
    assert torch.allclose(logits, probe["logits"], atol=1e-4)
    assert (tmp_path / "hf" / "model.safetensors").exists() and tokenizer.chat_template
    assert not any("lora" in k for k in model.state_dict())


def test_lora_adapter_export_loads_with_peft(trained_run, tmp_path):
    from peft import AutoPeftModelForCausalLM

    _, run_dir = trained_run("method=lora", *STEPS)
    done = export(run_dir, "--adapter", "--out", str(tmp_path / "adapter"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    model = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")
    probe = engine_probe(run_dir)
    with torch.no_grad():
        assert torch.allclose(model(input_ids=probe["input_ids"]).logits, probe["logits"], atol=1e-4)


def test_export_of_a_run_without_checkpoints_is_a_user_error(tmp_path):
    from tests.conftest import run_launcher

    assert run_launcher("run.dry_run=true", f"run.dir={tmp_path}/r").returncode == 0
    done = export(tmp_path / "r")
    assert done.returncode == 2 and "it holds no complete checkpoint" in " ".join(done.stderr.split())
