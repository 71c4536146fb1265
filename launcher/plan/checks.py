"""Plan checks that refuse what DeepSpeed or this model cannot run, each with what works instead: the tp/pp degrees
against the world size and the model's shape, the method and compile mode against the accelerator, and DeepSpeed keys
given in plan.deepspeed that the plan owns. Pure: they
read the config only (launcher.plan.resolve.resolve calls them)."""
from __future__ import annotations

from typing import Any

from launcher.config.schema import LauncherConfig
from launcher.errors import LauncherError
from launcher.plan.types import Plan

# Measured on 2x H200, 2026-11-30 (bench/results/gpu_runs.md). torch 2.13 traces the ContextVar on the CPU, so a later
# stack may lift this; it comes back only with a GPU run that trains and resumes under it.
DEEPCOMPILE_REFUSED = (
    "DeepSpeed's DeepCompile did not train a transformers model on the tested stack (deepspeed 0.19.8, torch 2.11, "
    "transformers 5.17): transformers' output capturing sets a ContextVar that torch.compile could not trace, so the "
    "model's body ran outside DeepCompile's graph, and under ZeRO-3 the embedding met its partitioned weight "
    "('weight' must be 2-D)"
)


def check_model_parallel(cfg: LauncherConfig, world: int) -> None:
    """Degrees that DeepSpeed can run and that this model's shape allows; each refusal says what works instead."""
    tp, pp, arch, zero = cfg.plan.tp, cfg.plan.pp, cfg.model.arch, cfg.plan.zero_stage
    if cfg.plan.sp > 1:
        _check_sequence_parallel(cfg, world)
    if tp > 1 and pp > 1:
        raise LauncherError(
            "plan.pp", pp, "use tp alone (+plan=tp, with ZeRO-1/2 over the remaining ranks) or pp alone (+plan=pp); "
            "for a model too large for either, plan.tp=1 plan.pp=1 with +plan=zero3",
            problem=f"tp={tp} with pp={pp} cannot run on DeepSpeed: AutoTP shards a Hugging Face model by its tp_plan "
            "and finds no sharding policy in a PipelineModule, and its data x tensor process groups would replace the "
            "pipeline's grid",
        )
    if world % (tp * pp):
        field_name, value = ("plan.tp", tp) if tp > 1 else ("plan.pp", pp)
        divisors = [d for d in range(1, world + 1) if world % d == 0]
        raise LauncherError(field_name, value, f"use a degree that divides the world size: one of {divisors}",
                            problem=f"world size {world} is not divisible by tp x pp = {tp * pp}")
    if tp > 1:
        _check_tensor_parallel(cfg, tp)
    if pp > 1:
        if pp > arch.num_layers:
            raise LauncherError("plan.pp", pp, f"use plan.pp <= {arch.num_layers}",
                                problem=f"a stage needs at least one decoder layer and the model has {arch.num_layers}")
        if zero >= 2:
            raise LauncherError(
                "plan.zero_stage", zero, "use +plan=pp (ZeRO-1) or plan.zero_stage=1; to shard more than the optimizer, "
                "use plan.pp=1 with +plan=zero3",
                problem=f"DeepSpeed's pipeline engine refuses ZeRO-{zero} (ZeRO-2 and ZeRO-3 are incompatible with "
                "pipeline parallelism)")
        if zero == 0 and cfg.train.grad_clip > 0:
            raise LauncherError(
                "plan.zero_stage", 0, "use plan.zero_stage=1 (the pp preset) or train.grad_clip=0",
                problem="with pipeline parallel and ZeRO-0 DeepSpeed clips gradients by a wrong norm (it skips "
                "parameters on ranks whose model-parallel rank is not 0)")
        if cfg.method.name == "qlora":
            raise LauncherError("method", "qlora", "use method=lora with plan.pp, or method=qlora with plan.pp=1",
                                problem="4-bit (bitsandbytes) weights are not supported in a DeepSpeed pipeline here")


def _check_sequence_parallel(cfg: LauncherConfig, world: int) -> None:
    """What DeepSpeed's Ulysses path (0.19.8) can run: each refusal names what works instead."""
    sp, arch, p = cfg.plan.sp, cfg.model.arch, cfg.plan
    if p.tp > 1 or p.pp > 1:
        field_name, value = ("plan.tp", p.tp) if p.tp > 1 else ("plan.pp", p.pp)
        raise LauncherError(field_name, value, f"use plan.sp={sp} with plan.tp=1 plan.pp=1 (ZeRO-3 shards the model "
                            "over every rank), or tp/pp without sp",
                            problem="sequence parallel is not combined with tensor or pipeline parallel here: "
                            "DeepSpeed's Ulysses groups and AutoTP's or the pipeline's groups would both claim the mpu")
    if world % sp:
        divisors = [d for d in range(2, world + 1) if world % d == 0]
        raise LauncherError("plan.sp", sp, f"use a degree that divides the world size: one of {divisors}",
                            problem=f"world size {world} is not divisible by sp={sp}")
    if arch.num_heads % sp or (arch.num_kv_heads % sp and sp % arch.num_kv_heads):
        options = [d for d in range(2, arch.num_heads + 1) if arch.num_heads % d == 0 and world % d == 0
                   and (arch.num_kv_heads % d == 0 or d % arch.num_kv_heads == 0)]
        raise LauncherError("plan.sp", sp, f"use a degree that divides the attention heads: one of {options}",
                            problem=f"the model has {arch.num_heads} attention heads and {arch.num_kv_heads} key/value "
                            f"heads; Ulysses gives each rank heads/sp of them (key/value heads are replicated when sp "
                            "is a multiple of their count)")
    attn = cfg.model.attn_implementation
    if attn == "eager" or attn.startswith("paged"):
        raise LauncherError("model.attn_implementation", attn, "use sdpa (the default) or a flash attention kernel",
                            problem="Ulysses sequence parallel needs an attention that takes no 4D mask")
    if cfg.data.packing and not attn.startswith("flash_attention"):
        raise LauncherError("data.packing", True, "use data.packing=false with sp, or model.attn_implementation="
                            "flash_attention_2 (on GPUs with flash-attn installed)",
                            problem=f"with {attn} attention, Ulysses drops the mask that keeps packed examples apart, "
                            "so tokens would attend across examples; only flash attention separates them by position ids")
    zero = p.deepspeed.get("zero_optimization", {}) if isinstance(p.deepspeed, dict) else {}
    if isinstance(zero, dict) and zero.get("reduce_scatter") is False:
        raise LauncherError("plan.deepspeed.zero_optimization.reduce_scatter", False, "drop the override with sp",
                            problem="the gradient scaling under sequence parallel follows DeepSpeed's reduce-scatter; "
                            "an all-reduce would average the sp group's gradients instead of adding them")
    if p.compile != "off":
        raise LauncherError("plan.compile", p.compile, "use plan.compile=off with sp",
                            problem="compiling through Ulysses' all-to-all attention has not been measured here")


def _check_tensor_parallel(cfg: LauncherConfig, tp: int) -> None:
    arch = cfg.model.arch
    if arch.num_heads % tp or arch.num_kv_heads % tp:
        ok = [d for d in range(1, arch.num_kv_heads + 1) if arch.num_kv_heads % d == 0 and arch.num_heads % d == 0]
        raise LauncherError(
            "plan.tp", tp, f"use plan.tp in {ok}",
            problem=f"tp must divide the attention heads ({arch.num_heads}) and the KV heads ({arch.num_kv_heads})")
    if cfg.method.name in ("lora", "qlora"):
        raise LauncherError(
            "method", cfg.method.name, "use method=full with plan.tp, or keep LoRA and use plan.tp=1 (a ZeRO plan, "
            "or +plan=pp)",
            problem="DeepSpeed AutoTP replaces the linear layers peft wrapped, so the adapters are dropped silently "
            "(nothing left to train)")
    if cfg.plan.zero_stage == 3:
        raise LauncherError(
            "plan.zero_stage", 3, "use plan.zero_stage=1 or 2 with plan.tp (+plan=tp), or plan.tp=1 with +plan=zero3",
            problem="tensor parallel runs here with ZeRO 0-2 only: their checkpoints resume and export, ZeRO-3 ones "
            "are not tested")


def check_method(cfg: LauncherConfig, accelerator: str) -> None:
    """What the accelerator allows: QLoRA needs CUDA; DeepCompile and torch.compile have their own limits."""
    if cfg.method.name == "qlora" and accelerator != "cuda":
        raise LauncherError(
            "method", "qlora", "QLoRA needs a CUDA GPU (bitsandbytes 4-bit); this run has none: use method=lora"
        )
    p = cfg.plan
    if p.compile == "deepcompile":
        raise LauncherError("plan.compile", "deepcompile", "use plan.compile=torch (torch.compile through the "
                            "engine, any ZeRO stage) or off", problem=DEEPCOMPILE_REFUSED)
    if p.compile == "torch" and p.pp > 1:
        raise LauncherError("plan.compile", "torch", "use plan.compile=off with pipeline parallelism",
                            problem="the pipeline engine runs its stages' modules itself, outside a compiled model")


def check_fp8(cfg: LauncherConfig, accelerator: str, hw_arch: str, local: bool) -> None:
    """train.precision=fp8 (launcher/train/fp8.py) where it has been measured: full fine-tuning of the launcher's own
    model, data parallel with ZeRO 0-2, on GPUs with FP8 tensor cores. `hw_arch` is this machine's compute capability,
    checked when the ranks run here (`local`); each rank checks its own GPU as well."""
    if cfg.train.precision != "fp8":
        return
    field, value, fix, problem = _fp8_conflict(cfg, accelerator, hw_arch, local)
    if field:
        raise LauncherError(field, value, fix, problem=problem)


FP8_INSTALL = ("install torchao (pip install -e '.[fp8]' in the launcher's checkout: torchao>=0.17, for torch 2.11+) "
               "or use train.precision=bf16")


def check_fp8_installed(plan: Plan, installed: bool) -> None:
    """On the launching host, before any rank starts: a local fp8 run needs torchao in this environment (ranks on
    other hosts check their own when they convert, launcher/train/fp8.py)."""
    if plan.fp8 and plan.backend == "local" and not installed:
        raise LauncherError("train.precision", "fp8", FP8_INSTALL, problem="torchao is not installed in this environment")


def _fp8_conflict(cfg: LauncherConfig, accelerator: str, hw_arch: str, local: bool) -> tuple[str, Any, str, str]:
    p = cfg.plan
    bf16 = "or use train.precision=bf16"
    if accelerator != "cuda":
        return "train.precision", "fp8", "use train.precision=bf16 or fp32", "FP8 matmuls need a CUDA GPU"
    if local and hw_arch and tuple(int(x) for x in hw_arch.split(".")[:2]) < (8, 9):
        return ("train.precision", "fp8", "use train.precision=bf16 on this GPU",
                f"FP8 tensor cores come with compute capability 8.9 (Ada, Hopper, Blackwell); this GPU is {hw_arch}")
    if cfg.script or cfg.script_module:
        return ("train.precision", "fp8", "convert the model in the script (torchao.float8) and use "
                "train.precision=bf16", "a script builds its own model, which the launcher does not convert")
    if cfg.method.name != "full":
        return ("method", cfg.method.name, f"use method=full with train.precision=fp8, {bf16}",
                "FP8 here converts trainable layers; LoRA's frozen base layers would still compute their weight "
                "gradients in FP8, which has not been measured to gain")
    if p.tp > 1 or p.pp > 1 or p.sp > 1:
        return ("plan.tp" if p.tp > 1 else "plan.pp" if p.pp > 1 else "plan.sp", max(p.tp, p.pp, p.sp),
                f"use a data-parallel plan (ddp, zero1, zero2) with train.precision=fp8, {bf16}",
                "FP8 layers under tensor, pipeline or sequence parallelism have not been measured here")
    if p.zero_stage == 3:
        return ("plan.zero_stage", 3, f"use +plan=zero2 (or ddp, zero1, their offload) with train.precision=fp8, "
                f"{bf16}", "ZeRO-3 gathers each weight in hooks around the layer that FP8 compiles; that pairing "
                "has not been measured here")
    return "", None, "", ""


# Keys of ds_config.json that the plan owns: set through these fields so that the plan, the memory estimate and
# the batch arithmetic agree with what DeepSpeed runs.
PLAN_OWNED_DS_KEYS = {
    "train_batch_size": "train.global_batch_size", "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.global_batch_size and train.micro_batch_size",
    "bf16": "train.precision", "fp16": "train.precision", "gradient_clipping": "train.grad_clip",
    "tensor_parallel": "plan.tp", "pipeline": "plan.pp", "sequence_parallel_size": "plan.sp",
    "zero_optimization.stage": "plan.zero_stage",
    "zero_optimization.offload_optimizer": "plan.offload_optimizer (+plan=zero3_offload)",
    "zero_optimization.offload_param": "plan.offload_params (+plan=zero3_offload)",
    "zero_optimization.overlap_comm": "plan.overlap_comm",
    "zero_optimization.reduce_bucket_size": "plan.reduce_bucket_mb",
    "zero_optimization.allgather_bucket_size": "plan.allgather_bucket_mb",
    "zero_optimization.stage3_prefetch_bucket_size": "plan.stage3_prefetch_mb",
    "optimizer": "train.lr, train.weight_decay and train.adam_*", "scheduler": "train.warmup_steps and train.min_lr_ratio",
    "compile": "plan.compile",
}


def check_deepspeed_extra(cfg: LauncherConfig) -> None:
    """plan.deepspeed may add DeepSpeed keys, not replace the plan's own."""
    extra = cfg.plan.deepspeed
    if "zero_optimization" in extra and not isinstance(extra["zero_optimization"], dict):
        raise LauncherError("plan.deepspeed.zero_optimization", extra["zero_optimization"], "give its keys one by "
                            "one, e.g. +plan.deepspeed.zero_optimization.round_robin_gradients=true")
    for key, field_name in PLAN_OWNED_DS_KEYS.items():
        top, _, sub = key.partition(".")
        node = extra.get(top)
        if top in extra and (not sub or (isinstance(node, dict) and sub in node)):
            raise LauncherError(f"plan.deepspeed.{key}", node[sub] if sub else node,
                                f"this DeepSpeed key is the plan's own: set {field_name} instead")
