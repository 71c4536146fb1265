"""Communication sizes chosen from the model (launcher/plan/comm_sizes.py)."""
from __future__ import annotations

import json


from launcher.config.compose import compose
from launcher.config.schema import ArchConfig
from launcher.plan.hardware import Hardware
from launcher.plan.resolve import resolve
from launcher.render.deepspeed import render_ds_config
from launcher.plan.comm_sizes import M, MAX_BUCKET_M, comm_sizes, layer_params

H200x2 = Hardware("cuda", 2, "NVIDIA H200", 139.8, "9.0", True, 32, 256.0, "x86_64")
BENCH = ArchConfig(hidden_size=2048, num_layers=16, num_heads=16, num_kv_heads=8, intermediate_size=8192,
                   vocab_size=32000)  # bench/perf.py's 1.1B model
BENCH_OVERRIDES = [f"model.arch.{k}={v}" for k, v in (("hidden_size", 2048), ("num_layers", 16), ("num_heads", 16),
                   ("num_kv_heads", 8), ("intermediate_size", 8192), ("vocab_size", 32000))]


def test_layer_params_is_what_transformers_builds():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    arch = ArchConfig(hidden_size=256, num_layers=3, num_heads=8, num_kv_heads=2, intermediate_size=688)
    config = LlamaConfig(hidden_size=256, num_hidden_layers=3, num_attention_heads=8, num_key_value_heads=2,
                         intermediate_size=688)
    layer = LlamaDecoderLayer(config, layer_idx=0)
    assert layer_params(arch) == sum(p.numel() for p in layer.parameters())


def test_a_1b_model_gets_200m_buckets_and_prefetches_three_whole_layers():
    sizes = comm_sizes(BENCH, "full", 16, (), model_parallel=1)
    assert sizes.reduce_bucket_mb == sizes.allgather_bucket_mb == MAX_BUCKET_M
    assert sizes.stage3_prefetch_mb * M >= 3 * layer_params(BENCH) > 50 * M  # DeepSpeed's 50M holds no whole layer


def test_small_models_and_adapters_get_buckets_of_their_own_size():
    tiny = comm_sizes(ArchConfig(), "full", 16, (), model_parallel=1)
    assert tiny.reduce_bucket_mb == 1 and tiny.stage3_prefetch_mb == 50
    lora = comm_sizes(BENCH, "lora", 16, ("q_proj", "v_proj"), model_parallel=1)
    assert lora.reduce_bucket_mb == 2  # 16 layers x 16 x (2048 + 2048 + 2048 + 1024) = 1.8M trained parameters
    split = comm_sizes(BENCH, "full", 16, (), model_parallel=4)
    assert split.reduce_bucket_mb == MAX_BUCKET_M  # a quarter of the model per tp x pp rank is still more
    assert comm_sizes(BENCH, "full", 16, (), model_parallel=8).reduce_bucket_mb == 136  # an eighth is less


def test_what_the_user_sets_is_kept_and_rendered():
    cfg, _ = compose(["+plan=zero3", *BENCH_OVERRIDES, "plan.reduce_bucket_mb=200", "plan.stage3_prefetch_mb=64"])
    plan = resolve(cfg, H200x2, run_dir="/runs/x", run_name="x")
    zero = render_ds_config(plan)["zero_optimization"]
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"]) == (200 * M, 64 * M)
    cfg, _ = compose(["+plan=zero3", *BENCH_OVERRIDES])
    zero = render_ds_config(resolve(cfg, H200x2, run_dir="/runs/x", run_name="x"))["zero_optimization"]
    assert zero["reduce_bucket_size"] == MAX_BUCKET_M * M and zero["stage3_prefetch_bucket_size"] >= 3 * layer_params(BENCH)
    json.dumps(zero)  # plain numbers only


def test_a_hub_model_on_the_tiny_preset_gets_fixed_sizes_not_the_tiny_models():
    cfg, _ = compose(["+plan=zero3", "model.path=Qwen/Qwen2.5-7B-Instruct"])
    zero = render_ds_config(resolve(cfg, H200x2, run_dir="/runs/x", run_name="x"))["zero_optimization"]
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"]) == (MAX_BUCKET_M * M, 200 * M)
    cfg, _ = compose(["+plan=zero3", "model=qwen2_5_7b"])  # the preset names its shape
    zero = render_ds_config(resolve(cfg, H200x2, run_dir="/runs/x", run_name="x"))["zero_optimization"]
    assert zero["stage3_prefetch_bucket_size"] >= 3 * layer_params(cfg.model.arch)
