"""train.precision=fp8: which linear layers torchao converts, the conversion itself on a tiny Llama (torchao's float8
casts and scaled matmuls run on the CPU too, in bf16), and the plan checks that keep fp8 to what has been measured."""
from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

# scripts/setup.sh --test puts torchao beside the environment, not in it (the ranks of every other test would import
# it through transformers); this test reads it from there
EXTRAS = str(Path(sys.prefix) / "extras")
if EXTRAS not in sys.path:
    sys.path.append(EXTRAS)

from launcher.config.compose import compose
from launcher.errors import LauncherError
from launcher.launch.summary import plan_table, summary_lines
from launcher.plan.checks import check_fp8_installed
from launcher.plan.hardware import Hardware
from launcher.plan.resolve import resolve
from launcher.plan.types import Plan
from launcher.render.launch import LaunchSpec
from launcher.train import fp8
from launcher.train.fp8 import apply_fp8, check_device, convert, converts

CPU = Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64")
H200x2 = Hardware("cuda", 2, "NVIDIA H200", 139.8, "9.0", True, 32, 256.0, "x86_64")
A6000x2 = Hardware("cuda", 2, "NVIDIA RTX A6000", 48.0, "8.6", True, 32, 256.0, "x86_64")
SPEC = LaunchSpec(argv=("python", "-m", "torch.distributed.run"))
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
               "mlp.up_proj", "mlp.down_proj")


def linear(k: int, n: int) -> nn.Linear:
    return nn.Linear(k, n, bias=False, device="meta")  # sizes only: no memory for a 2048 x 8192 weight


# ---- which layers convert -------------------------------------------------------------------------------------------

def test_a_large_linear_converts_and_a_small_one_stays_bf16_by_torchaos_tensorwise_rule():
    assert converts(linear(2048, 8192), "model.layers.0.mlp.up_proj")
    assert converts(linear(8192, 2048), "model.layers.0.mlp.down_proj")
    assert not converts(linear(2048, 1024), "model.layers.0.self_attn.k_proj")  # a 1B Llama's k/v: K<=4096, N<=1024
    assert not converts(linear(4096, 1024), "x")  # both at the bound: still small
    assert converts(linear(4096 + 16, 1024), "x") and converts(linear(4096, 1024 + 16), "x")


def test_sizes_that_fp8_tensor_cores_do_not_take_stay_bf16():
    assert not converts(linear(2048, 8200), "x")  # N not a multiple of 16
    assert not converts(linear(8200, 2048), "x")  # K not a multiple of 16
    assert not converts(linear(8, 8), "x", small_k=0, small_n=0)


def test_the_output_layer_and_lora_adapters_never_convert():
    assert not converts(linear(2048, 128256), "lm_head")
    assert not converts(linear(2048, 128256), "model.lm_head")
    assert not converts(linear(8192, 8192), "model.layers.0.self_attn.q_proj.lora_A.default")
    assert not converts(linear(8192, 8192), "base_model.model.layers.0.mlp.lora_B.default")


def test_only_a_plain_nn_linear_converts():
    class MyLinear(nn.Linear):
        pass

    assert not converts(MyLinear(2048, 8192, device="meta"), "x")  # a subclass (bitsandbytes, peft) has its own forward
    assert not converts(nn.Embedding(8192, 2048, device="meta"), "x")
    assert not converts(nn.Conv1d(2048, 8192, 1, device="meta"), "x")
    assert not converts(nn.Sequential(linear(2048, 8192)), "x")


def test_explicit_thresholds_decide_what_is_small():
    assert converts(linear(64, 32), "x", small_k=32, small_n=32)
    assert not converts(linear(64, 32), "x")  # the default thresholds


# ---- the conversion on a tiny Llama ---------------------------------------------------------------------------------

def tiny_llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512)
    return LlamaForCausalLM(config).to(torch.bfloat16)


@pytest.fixture
def model() -> nn.Module:
    return tiny_llama()


def float8_linear():
    from torchao.float8.float8_linear import Float8Linear

    return Float8Linear


def test_convert_swaps_the_projections_and_keeps_the_parameters_and_the_state_dict(model):
    keys = list(model.state_dict())
    params = dict(model.named_parameters())
    names = convert(model, compile_layers=False, small_k=32, small_n=32)
    assert names == [f"model.layers.{i}.{p}" for i in range(2) for p in PROJECTIONS]
    for name in names:
        assert type(model.get_submodule(name)) is float8_linear()
    assert type(model.lm_head) is nn.Linear
    assert type(model.model.embed_tokens) is nn.Embedding
    assert list(model.state_dict()) == keys  # checkpoints resume into a bf16 run and export as before
    after = dict(model.named_parameters())
    assert after.keys() == params.keys()
    assert all(after[n] is params[n] for n in params)  # the same objects: the optimizer and ZeRO see these
    assert all(p.dtype == torch.bfloat16 for p in after.values())


def test_a_converted_model_trains_with_a_loss_close_to_the_bf16_model(model):
    reference = copy.deepcopy(model)
    names = convert(model, compile_layers=False, small_k=32, small_n=32)
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(1))
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)
    for name in names:
        grad = model.get_submodule(name).weight.grad
        assert grad is not None and grad.dtype == torch.bfloat16 and torch.isfinite(grad).all()
        assert grad.abs().sum() > 0
    assert model.lm_head.weight.grad is not None
    with torch.no_grad():
        expected = reference(input_ids=ids, labels=ids).loss
    assert abs(loss.item() - expected.item()) / expected.item() < 0.05


def test_compile_layers_compiles_each_converted_layer_on_its_own(model):
    """Only marks them (nn.Module.compile): nothing compiles until a forward, which this test does not run."""
    names = convert(model, compile_layers=True, small_k=32, small_n=32)
    compiled = {n for n, m in model.named_modules() if getattr(m, "_compiled_call_impl", None) is not None}
    assert compiled == set(names)


def test_a_model_with_nothing_large_enough_is_refused_and_left_as_it_was(model):
    with pytest.raises(LauncherError) as err:
        convert(model, compile_layers=False)  # the default thresholds: every layer of the tiny model is small
    assert (err.value.field, err.value.value) == ("train.precision", "fp8")
    text = str(err.value)
    assert "\n" not in text and text.startswith("error: train.precision='fp8' cannot be used.")
    assert "large enough" in text and "4096" in text and "use train.precision=bf16" in text
    assert not any(type(m) is float8_linear() for m in model.modules())


def test_without_torchao_the_error_says_what_to_install(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.float8", None)  # an import of it raises ImportError
    with pytest.raises(LauncherError) as err:
        convert(model, compile_layers=False, small_k=32, small_n=32)
    assert err.value.field == "train.precision" and "torchao is missing" in str(err.value)
    assert "pip install" in str(err.value) and "train.precision=bf16" in str(err.value)


def test_a_local_fp8_run_without_torchao_is_refused_before_any_rank_starts():
    plan = plan_for()
    with pytest.raises(LauncherError) as err:
        check_fp8_installed(plan, installed=False)
    assert err.value.field == "train.precision" and "torchao is not installed" in str(err.value)
    assert "pip install -e '.[fp8]'" in str(err.value)
    check_fp8_installed(plan, installed=True)
    check_fp8_installed(plan_for("+topo=dual_pgx"), installed=False)  # the other hosts' ranks check their own
    check_fp8_installed(dataclasses.replace(plan, fp8=False), installed=False)


def test_a_rank_without_a_cuda_gpu_is_refused():
    with pytest.raises(LauncherError) as err:
        check_device(torch.device("cpu"))
    assert err.value.field == "train.precision" and "CUDA" in str(err.value)


def test_apply_fp8_does_nothing_unless_the_plan_asks(model):
    assert apply_fp8(model, SimpleNamespace(fp8=False, compile="off"), torch.device("cpu")) == []
    assert not any(type(m) is float8_linear() for m in model.modules())
    with pytest.raises(LauncherError, match="CUDA"):
        apply_fp8(model, SimpleNamespace(fp8=True, compile="off"), torch.device("cpu"))


def test_the_thresholds_are_torchaos_own_for_tensorwise():
    """launcher/train/fp8.py copies torchao's rule; a torchao that changes it shows here."""
    from torchao.float8.float8_linear_utils import _auto_filter_for_recipe

    assert (fp8.SMALL_K, fp8.SMALL_N) == (4096, 1024) and fp8.RECIPE == "tensorwise"
    keep = _auto_filter_for_recipe("tensorwise", filter_fqns=["lm_head"])
    for k, n in ((2048, 8192), (2048, 1024), (4096, 1024), (4112, 1024), (1024, 1040), (8192, 2048)):
        assert keep(linear(k, n), "model.layers.0.x") == converts(linear(k, n), "model.layers.0.x"), (k, n)


# ---- the plan checks, through resolve -------------------------------------------------------------------------------

def plan_for(*overrides: str, hw: Hardware = H200x2) -> Plan:
    cfg, _ = compose(["train.micro_batch_size=2", "train.precision=fp8", *overrides])
    return resolve(cfg, hw, run_dir="/runs/x", run_name="x")


def refusal(*overrides: str, hw: Hardware = H200x2) -> LauncherError:
    with pytest.raises(LauncherError) as err:
        plan_for(*overrides, hw=hw)
    text = str(err.value)
    assert text == err.value.paragraph() and "\n" not in text  # one paragraph
    assert text.startswith(f"error: {err.value.field}={err.value.value!r} cannot be used.")
    return err.value


def test_fp8_on_a_machine_without_cuda_is_refused():
    err = refusal(hw=CPU)
    assert (err.field, err.value) == ("train.precision", "fp8")
    assert "CUDA" in str(err) and "train.precision=bf16" in str(err)


def test_fp8_on_a_local_gpu_older_than_ada_is_refused():
    err = refusal(hw=A6000x2)
    assert (err.field, err.value) == ("train.precision", "fp8")
    assert "8.9" in str(err) and "8.6" in str(err)


def test_a_remote_jobs_gpus_are_not_judged_by_the_launching_machine():
    """+topo=dual_pgx runs on other hosts (each rank checks its own GPU): an old local GPU does not refuse it."""
    p = plan_for("+topo=dual_pgx", hw=A6000x2)
    assert p.backend != "local" and p.fp8 and p.precision == "bf16"


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_fp8_with_lora_is_refused(method):
    err = refusal(f"method={method}")
    assert (err.field, err.value) == ("method", method) and "method=full" in str(err)


def test_fp8_with_zero3_is_refused():
    err = refusal("+plan=zero3")
    assert (err.field, err.value) == ("plan.zero_stage", 3) and "+plan=zero2" in str(err)


@pytest.mark.parametrize("overrides, field", [
    (("+plan=tp", "plan.tp=2"), "plan.tp"),
    (("plan.tp=2",), "plan.tp"),
    (("+plan=pp",), "plan.pp"),
])
def test_fp8_with_model_parallelism_is_refused(overrides, field):
    err = refusal(*overrides)
    assert (err.field, err.value) == (field, 2) and "data-parallel plan" in str(err)


def test_fp8_with_a_user_script_is_refused(tmp_path):
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    for override in (f"script={script}", "script=train.py", "script_module=pkg.train"):
        err = refusal(override)
        assert (err.field, err.value) == ("train.precision", "fp8") and "script" in str(err)


def test_fp8_resolves_to_bf16_with_fp8_matmuls_on_hopper():
    for plan in (plan_for(), plan_for("+plan=zero2", "method=full"), plan_for("+plan=ddp"), plan_for("+plan=zero1")):
        assert plan.precision == "bf16" and plan.fp8 is True
    plan = plan_for("+plan=zero2", "method=full")
    line = next(line for line in summary_lines(plan, SPEC, None) if line.startswith("plan "))
    assert line.endswith(", bf16 + fp8 matmuls")
    assert any(line.endswith("; bf16 + fp8 matmuls") for line in plan_table(plan))


def test_other_precisions_do_not_set_fp8():
    cfg, _ = compose(["train.micro_batch_size=2", "train.precision=bf16"])
    plan = resolve(cfg, H200x2, run_dir="/runs/x", run_name="x")
    assert plan.precision == "bf16" and plan.fp8 is False
    assert not any("fp8" in line for line in summary_lines(plan, SPEC, None) + plan_table(plan))


def test_auto_plan_with_fp8_picks_a_plan_that_fp8_allows():
    plan = plan_for("+plan=auto")
    assert plan.fp8 and plan.zero_stage < 3 and plan.tp == plan.pp == plan.sp == 1


def test_an_unknown_precision_lists_fp8_among_the_choices():
    with pytest.raises(LauncherError) as err:
        compose(["train.precision=fp4"])
    assert err.value.field == "train.precision" and "fp8" in str(err.value)
