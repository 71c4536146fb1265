"""`python -m launcher.export runs/<name>`: a Hugging Face model directory from the latest complete checkpoint.

ZeRO shards are consolidated with DeepSpeed's zero_to_fp32; LoRA is merged into the base (or saved as an adapter with
`--adapter`); the tokenizer is saved beside the weights. The export is checked against `probe.pt`, the logits the
engine itself produced when it saved the checkpoint, and refused if they differ.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

from launcher.checkpoint.store import Checkpoint, resolve_resume
from launcher.errors import LauncherError, report
from launcher.rundir import CHECKPOINTS, PLAN_FILE
from launcher.plan.types import Plan

TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2, "fp16": 1e-2}


def consolidated_state_dict(ckpt: Checkpoint, plan: Plan) -> dict[str, torch.Tensor]:
    """Full fp32 weights keyed as in the trained module (peft-wrapped names for LoRA)."""
    if plan.tp > 1 or plan.pp > 1:
        from launcher.checkpoint.export_parallel import hf_state_dict_from_checkpoint

        return hf_state_dict_from_checkpoint(ckpt.path, plan)
    if ckpt.meta.get("zero_stage", plan.zero_stage) == 0:
        states = torch.load(ckpt.path / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
        return {k: v.float() for k, v in states["module"].items()}
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(ckpt.path.parent), tag=ckpt.tag)


def trained_module(plan: Plan, tokenizer: Any, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Rebuild the module the engine trained (fp32, CPU) and load the consolidated weights into it strictly."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from launcher.train.model import apply_lora, tiny_config

    if plan.model.path:
        config = AutoConfig.from_pretrained(plan.model.path, trust_remote_code=plan.model.trust_remote_code)
    else:
        config = tiny_config(plan, tokenizer)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    if plan.method.name in ("lora", "qlora"):
        model = apply_lora(model, _lora_only(plan))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight", "base_model.model.lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"checkpoint does not match the model: missing {sorted(missing)[:5]}, "
                           f"unexpected {sorted(unexpected)[:5]}")
    return model.eval()


def _lora_only(plan: Plan) -> Plan:
    import dataclasses

    return dataclasses.replace(plan, method=dataclasses.replace(plan.method, name="lora"),
                               train=dataclasses.replace(plan.train, gradient_checkpointing=False))


def probe_difference(model: torch.nn.Module, ckpt: Checkpoint) -> float | None:
    probe_file = ckpt.path / "probe.pt"
    if not probe_file.exists():
        return None
    probe = torch.load(probe_file, weights_only=False)
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"], use_cache=False).logits.float()
    return float((logits - probe["logits"]).abs().max())


def export(run_dir: Path, out: Path | None, adapter: bool, step: str = "auto") -> Path:
    plan = Plan.from_dict(json.loads((run_dir / PLAN_FILE).read_text()))
    ckpt = resolve_resume(run_dir / CHECKPOINTS, step)
    if ckpt is None:
        raise LauncherError("run_dir", str(run_dir), "train first, or pass --step with a saved global step",
                            problem="it holds no complete checkpoint")
    if adapter and plan.method.name == "full":
        raise LauncherError("--adapter", True, "a full fine-tune has no adapter: export without --adapter")
    out = out or run_dir / "export" / (f"{ckpt.tag}-adapter" if adapter else ckpt.tag)
    from launcher.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer(plan.model.tokenizer or plan.model.path)
    model = trained_module(plan, tokenizer, consolidated_state_dict(ckpt, plan))
    diff = probe_difference(model, ckpt)
    tolerance = TOLERANCE[plan.precision]
    if diff is not None and diff > tolerance:
        raise RuntimeError(f"exported weights give logits {diff:.2e} away from the engine's (tolerance {tolerance})")
    if not adapter and plan.method.name in ("lora", "qlora"):
        model = model.merge_and_unload()
    elif adapter:
        _point_adapter_at_base(model, tokenizer, out, plan)
    _save(model, tokenizer, out, plan)
    checked = f"logits match the engine's within {diff:.1e}" if diff is not None else "no probe to check against"
    print(f"exported {ckpt.path} -> {out} ({'LoRA adapter' if adapter else 'full model'}, {plan.precision}; {checked})")
    return out


def _point_adapter_at_base(model: Any, tokenizer: Any, out: Path, plan: Plan) -> None:
    """An adapter names its base model: the hub id or local path trained on, or (tiny model, which has no such
    place) the base weights written next to it under base/."""
    base = plan.model.path
    if not base:
        base = str(out / "base")
        import copy

        _save(copy.deepcopy(model).unload(), tokenizer, Path(base), plan)  # small: only the tiny model gets here
    model.peft_config["default"].base_model_name_or_path = base


def _save(model: torch.nn.Module, tokenizer: Any, out: Path, plan: Plan) -> None:
    from launcher.train.model import DTYPES

    out.mkdir(parents=True, exist_ok=True)
    model = model.to(DTYPES[plan.precision])
    stop = [i for i in {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")} if isinstance(i, int) and i >= 0]
    config = getattr(model, "generation_config", None)
    if config is not None and stop:
        config.eos_token_id = stop if len(stop) > 1 else stop[0]
        config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.export", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="the run directory (runs/<name>)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: <run_dir>/export/<tag>)")
    parser.add_argument("--adapter", action="store_true", help="LoRA runs: save the adapter only (peft format)")
    parser.add_argument("--step", default="auto", help="global step to export (default: the latest complete)")
    args = parser.parse_args(argv)
    try:
        if not (args.run_dir / PLAN_FILE).exists():
            raise LauncherError("run_dir", str(args.run_dir), "give a run directory made by the launcher",
                                problem="it has no plan.json")
        export(args.run_dir, args.out, args.adapter, args.step)
    except LauncherError as err:
        debug = os.environ.get("LAUNCHER_DEBUG") == "1"
        if debug:
            traceback.print_exc()
        return report(err, debug, how="LAUNCHER_DEBUG=1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
