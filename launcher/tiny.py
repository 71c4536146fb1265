"""The project's tiny model, its tokenizer and the shipped instruction data as plain Hugging Face / torch objects, for
user scripts (examples/) and quick experiments; plus what a DeepSpeed engine says about its own settings.

Nothing here knows the launcher's plan: a script gets that from LAUNCHER_DS_CONFIG / LAUNCHER_PLAN or its arguments.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from launcher.config.schema import ArchConfig

IGNORE_INDEX = -100


def tokenizer() -> Any:
    """The shipped tokenizer (launcher/assets/tokenizer), with a pad token and a chat template."""
    from launcher.data.tokenization import load_tokenizer

    return load_tokenizer("")


def model(tok: Any, seed: int = 1234, arch: ArchConfig | None = None) -> torch.nn.Module:
    """The tiny Llama of conf/model/tiny.yaml, built from its config (no download), fp32, the same on every rank."""
    from transformers import AutoConfig, AutoModelForCausalLM

    a = arch or ArchConfig()
    config = AutoConfig.for_model(
        a.model_type, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
        num_hidden_layers=a.num_layers, num_attention_heads=a.num_heads, num_key_value_heads=a.num_kv_heads,
        vocab_size=a.vocab_size or len(tok), max_position_embeddings=a.max_position_embeddings,
        tie_word_embeddings=a.tie_word_embeddings, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, use_cache=False,
    )
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def dataset(tok: Any, seq_len: int = 256, path: str = "", fmt: str = "alpaca") -> list[dict[str, list[int]]]:
    """The shipped alpaca rows (or `path`) as {"input_ids", "labels"}: labels train only the answers."""
    from launcher.assets import default_data_path
    from launcher.data.formats import load_conversations
    from launcher.data.tokenization import build_examples

    examples = build_examples(tok, load_conversations(path or default_data_path(fmt), fmt), seq_len)
    return [{"input_ids": e.input_ids, "labels": e.labels} for e in examples]


def collate(rows: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is masked out of attention and loss."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        labels[i, :n] = torch.tensor(r["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def skip_shm_comm_op() -> None:
    """On CPU, DeepSpeed JIT-builds a shared-memory comm op at its first init (~35 s; it does not build on aarch64,
    DeepSpeed #5640); training over gloo never needs it. Call before the engine is created, as the launcher's own
    worker does."""
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def share_process_group_with_deepspeed() -> None:
    """On CPU, transformers' Trainer (--use_cpu) sets up torch's process group without telling DeepSpeed's comm
    layer, so ZeRO-3's partitioned model init counts one process and refuses the batch numbers. Call after
    `args.device` and before the model is built."""
    import torch.distributed as dist

    if dist.is_initialized():
        import deepspeed

        deepspeed.init_distributed(dist_backend=dist.get_backend())


def engine_settings(engine: Any) -> dict[str, Any]:
    """What a DeepSpeed engine actually runs with, read from the engine: compare it with the rendered JSON."""
    import torch.distributed as dist

    return {
        "world_size": dist.get_world_size(),
        "zero_stage": engine.zero_optimization_stage(),
        "train_batch_size": engine.train_batch_size(),
        "train_micro_batch_size_per_gpu": engine.train_micro_batch_size_per_gpu(),
        "gradient_accumulation_steps": engine.gradient_accumulation_steps(),
        "gradient_clipping": engine.gradient_clipping(),
        "bf16": engine.bfloat16_enabled(),
        "fp16": engine.fp16_enabled(),
        "optimizer": type(engine.optimizer).__name__,
        "base_optimizer": type(getattr(engine.optimizer, "optimizer", engine.optimizer)).__name__,
    }
