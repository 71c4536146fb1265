"""Model construction in a rank: hub id, local directory or the tiny model; then LoRA / QLoRA and checkpointing."""
from __future__ import annotations

import logging
import shutil
from typing import Any

import torch

from launcher.plan.memory import liger_applies
from launcher.plan.types import Plan

log = logging.getLogger("launcher")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def tiny_config(plan: Plan, tokenizer: Any) -> Any:
    from transformers import AutoConfig

    a = plan.model.arch
    return AutoConfig.for_model(
        a.model_type,
        hidden_size=a.hidden_size,
        intermediate_size=a.intermediate_size,
        num_hidden_layers=a.num_layers,
        num_attention_heads=a.num_heads,
        num_key_value_heads=a.num_kv_heads,
        vocab_size=a.vocab_size or len(tokenizer),
        max_position_embeddings=max(a.max_position_embeddings, plan.train.seq_len),
        tie_word_embeddings=a.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(plan: Plan, tokenizer: Any, local_rank: int) -> torch.nn.Module:
    """The model every rank builds identically (same seed); DeepSpeed shards it afterwards."""
    from transformers import AutoModelForCausalLM

    dtype = DTYPES[plan.precision]
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": plan.model.attn_implementation}
    if plan.model.path:
        if plan.method.name == "qlora":
            kwargs["quantization_config"] = _bnb_config(dtype)
            kwargs["device_map"] = {"": local_rank}
        if plan.model.revision:
            kwargs["revision"] = plan.model.revision
        model = AutoModelForCausalLM.from_pretrained(
            plan.model.path, trust_remote_code=plan.model.trust_remote_code, **kwargs
        )
    else:
        torch.manual_seed(plan.train.seed)
        # Random init on the GPU: on the CPU it runs on one thread (torchrun sets OMP_NUM_THREADS=1), a minute for 1B.
        device = torch.device("cuda", local_rank) if plan.accelerator == "cuda" else torch.device("cpu")
        with device:
            model = AutoModelForCausalLM.from_config(tiny_config(plan, tokenizer), **kwargs)
    model.config.use_cache = False
    apply_liger_kernels(model, plan)
    if plan.tiled_mlp:
        from launcher.train.tiled_mlp import apply_tiled_mlp

        log.info(f"tiled MLP (DeepSpeed's TiledMLP) on {apply_tiled_mlp(model)} MLP blocks (train.tiled_mlp)")
    if plan.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if plan.method.name in ("lora", "qlora"):
        model = apply_lora(model, plan)
    if plan.zero_stage == 3 and plan.stage3_fetch == "layer":
        if plan.method.name != "full":
            # DeepSpeed gathers a leaf module's weights for its backward in a hook that fires only when the layer's
            # input requires grad; with a frozen embedding it does not, and the backward meets partitioned weights.
            model.enable_input_require_grads()
        fetch_whole_layers(model)
    return model


def fetch_whole_layers(model: torch.nn.Module) -> list[str]:
    """ZeRO-3 gathers parameters around each submodule's forward and backward through hooks: a Llama layer has a
    dozen submodules, and their hooks, not the gathers, dominate a ZeRO-3 step on fast links. The model's decoder
    layer classes (transformers' `_no_split_modules`) become DeepSpeed leaf modules: one gather and one release per
    layer. A layer's weights are a small fraction of the model, so the memory cost is one layer gathered at once."""
    from deepspeed.utils import set_z3_leaf_modules

    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
    classes = sorted({type(m) for m in model.modules() if type(m).__name__ in names}, key=lambda c: c.__name__)
    if classes:
        set_z3_leaf_modules(model, classes)
        log.info(f"ZeRO-3 fetches whole layers: {', '.join(c.__name__ for c in classes)} (plan.stage3_fetch=layer)")
    return [c.__name__ for c in classes]


def apply_liger_kernels(model: torch.nn.Module, plan: Plan) -> list[str]:
    """liger-kernel's Triton kernels in place of the model's RMSNorm, SwiGLU MLP and RoPE, and a fused linear
    cross-entropy that never materializes the fp32 logits: less memory traffic per step, same math. Only on CUDA,
    for what it is tested with here (full and LoRA, no tp/pp). Returns what was applied."""
    m = plan.model
    if not liger_applies(m.liger_kernel, plan.accelerator, plan.tp, plan.pp, plan.method.name, plan.compile):
        return []
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except ImportError as err:
        log.info(f"liger-kernel not available ({err}); using transformers' kernels")
        return []
    if model.config.model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        return []
    if not any(shutil.which(cc) for cc in ("cc", "gcc", "clang")):
        log.info("liger-kernel skipped: Triton needs a C compiler to start its kernels and none is on PATH")
        return []
    fused_loss = m.liger_fused_loss
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=fused_loss)
    if fused_loss and plan.zero_stage == 3:
        _gather_head_with_model(model)
    applied = ["rms_norm", "swiglu", "rope"] + (["fused_linear_cross_entropy"] if fused_loss else [])
    log.info(f"liger-kernel: {', '.join(applied)}")
    return applied


def _gather_head_with_model(model: torch.nn.Module) -> None:
    """The fused loss reads lm_head.weight in the model's own forward, never calling lm_head: ZeRO-3 gathers a
    module's parameters only around that module's forward, so the head's weight is registered with the model's."""
    import deepspeed

    head = model.get_output_embeddings()
    if head is not None:
        deepspeed.zero.register_external_parameter(model, head.weight)


def _bnb_config(dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,
    )


def apply_lora(model: torch.nn.Module, plan: Plan) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    m = plan.method
    if m.name == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=plan.train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif plan.train.gradient_checkpointing:
        model.enable_input_require_grads()
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in m.target_modules if t in present]
    config = LoraConfig(
        r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout, target_modules=targets, task_type="CAUSAL_LM"
    )
    torch.manual_seed(plan.train.seed + 1)
    return get_peft_model(model, config)
