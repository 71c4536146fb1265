"""Whole-model weights from a tensor- or pipeline-parallel checkpoint, offline (no process group, no GPU).

Why a module of its own: those checkpoints hold no file with the whole model. Under AutoTP each
`mp_rank_XX_model_states.pt` holds one tensor rank's shards, rebuilt here with the layout DeepSpeed records next to
them (`universal_checkpoint_info.affine_map`). Under a pipeline each `layer_NN-model_states.pt` holds one pipeline
layer, named after the wrappers in launcher/train/pipeline.py; the names map back to the Hugging Face model's by
rebuilding those wrappers around an empty (meta-device) copy of the model the worker trained.
The result is the state dict that model would give: HF names, peft names under LoRA, CPU tensors.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from launcher.plan.types import Plan

MP_FILE = "mp_rank_{:02d}_model_states.pt"
LAYER_FILE = re.compile(r"^layer_(\d+)-model_states\.pt$")


def hf_state_dict_from_checkpoint(ckpt_dir: Path, plan: Plan) -> dict[str, torch.Tensor]:
    """The full model state dict of a checkpoint saved under plan.tp > 1 or plan.pp > 1."""
    if plan.pp > 1:
        return pipeline_state_dict(Path(ckpt_dir), plan)
    if plan.tp > 1:
        return tensor_parallel_state_dict(Path(ckpt_dir), plan.tp)
    raise ValueError(f"plan {plan.plan_name} has tp=1 and pp=1: its checkpoint is not model-parallel")


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def tensor_parallel_state_dict(ckpt_dir: Path, tp: int) -> dict[str, torch.Tensor]:
    """Rebuild every parameter from the tp shards with DeepSpeed's own affine map; a tied head shares the result."""
    from deepspeed.checkpoint.affine import ParamAffineMap

    shards = [_load(ckpt_dir / MP_FILE.format(r)) for r in range(tp)]
    affine = (shards[0].get("universal_checkpoint_info") or {}).get("affine_map", {}).get("params", {})
    maps = [(re.compile(pattern), ParamAffineMap.from_dict(entry)) for pattern, entry in affine.items()]
    module = shards[0]["module"]
    full: dict[str, torch.Tensor] = {}
    tied: list[str] = []
    for name in module:
        found = [m for pattern, m in maps if pattern.match(name)]
        if found:
            full[name] = found[0].rebuild({r: shard["module"][name] for r, shard in enumerate(shards)}).clone()
        else:
            tied.append(name)
    for name in tied:  # a tied head has no layout of its own: it is the embedding's tensor, saved once
        source = next((n for n in full if _same_tensor(module[n], module[name])), None)
        if source is None:
            raise ValueError(f"{ckpt_dir}: DeepSpeed recorded no tensor-parallel layout for {name}")
        full[name] = full[source]
    return full


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """torch.save keeps storage sharing within a file, so a tied weight loads as the same storage."""
    return (a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
            and a.storage_offset() == b.storage_offset() and a.shape == b.shape)


def pipeline_state_dict(ckpt_dir: Path, plan: Plan) -> dict[str, torch.Tensor]:
    """Every layer file's tensors under the model's names."""
    names = pipeline_layer_names(plan)
    files = {int(m.group(1)): p for p in ckpt_dir.iterdir() if (m := LAYER_FILE.match(p.name))}
    full: dict[str, torch.Tensor] = {}
    for index, path in sorted(files.items()):
        for key, tensor in _load(path).items():
            for name in names[index][key]:
                full[name] = tensor
    missing = sorted({n for layer in names for keys in layer.values() for n in keys} - set(full))
    if missing:
        raise ValueError(f"{ckpt_dir}: no pipeline layer file holds {missing[:5]}")
    return full


def pipeline_layer_names(plan: Plan) -> list[dict[str, list[str]]]:
    """For each pipeline layer: its state-dict key -> the model's state-dict name(s) of the same tensor (a tied
    embedding has two). Built by identity on an empty copy of the model, so it follows whatever pipeline.py does."""
    from deepspeed.pipe import LayerSpec

    from launcher.train.pipeline import pipeline_layers

    model = empty_model(plan)
    by_id: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        by_id.setdefault(id(tensor), []).append(name)
    out = []
    for layer in pipeline_layers(model, plan.data.packing):
        module = layer.build() if isinstance(layer, LayerSpec) else layer
        out.append({key: by_id[id(t)] for key, t in module.state_dict(keep_vars=True).items()})
    return out


def empty_model(plan: Plan) -> torch.nn.Module:
    """The model the worker builds (architecture, dtype, LoRA), on the meta device: names and shapes, no weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from launcher.train.model import DTYPES, apply_lora, tiny_config

    if plan.model.path:
        config = AutoConfig.from_pretrained(plan.model.path, trust_remote_code=plan.model.trust_remote_code,
                                            **({"revision": plan.model.revision} if plan.model.revision else {}))
    else:
        from launcher.data.tokenization import load_tokenizer

        config = tiny_config(plan, load_tokenizer(plan.model.tokenizer))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[plan.precision],
                                                 trust_remote_code=plan.model.trust_remote_code)
        if plan.method.name in ("lora", "qlora"):
            model = apply_lora(model, plan)
    return model
