"""Resume on another world size or ZeRO stage through DeepSpeed's universal checkpoint.

A checkpoint's `complete.json` records the plan it was saved under; when the resuming plan partitions the state
differently, rank 0 converts it once with DeepSpeed's `ds_to_universal` (into `global_step<N>_universal/`, atomically,
reused afterwards) and the engine loads it with `checkpoint.load_universal`.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from launcher.checkpoint.store import COMPLETE, Checkpoint, manifest, problems, write_atomic
from launcher.errors import LauncherError
from launcher.plan.types import Plan

LAYOUT_KEYS = ("world_size", "dp", "tp", "pp", "zero_stage")


def layout(plan: Plan) -> dict[str, int]:
    """How the checkpoint's shards are laid out. ZeRO shards over dp x sp (the whole sequence-data-parallel group), so
    a change of sp at the same world size keeps the layout and needs no conversion."""
    return {"world_size": plan.world_size, "dp": plan.dp * plan.sp, "tp": plan.tp, "pp": plan.pp,
            "zero_stage": plan.zero_stage}


def needs_conversion(meta: dict, plan: Plan) -> bool:
    """Plain DDP state is replicated, so it loads on any world size; ZeRO shards must match the plan."""
    saved = {k: meta.get(k) for k in LAYOUT_KEYS}
    if saved == layout(plan) or meta.get("universal"):
        return False
    return not (saved["zero_stage"] == 0 and plan.zero_stage == 0 and saved["tp"] == plan.tp and saved["pp"] == plan.pp)


def check_supported(ckpt: Checkpoint, plan: Plan) -> None:
    saved = ckpt.meta.get("zero_stage")
    if saved == 0 or plan.zero_stage == 0:
        raise LauncherError(
            "run.resume", str(ckpt.path), "resume it with the plan it was saved under (plan "
            f"{ckpt.meta.get('plan_name')}, world size {ckpt.meta.get('world_size')}), use a ZeRO plan on both sides, "
            "or start fresh with run.resume=never",
            problem=f"it was saved under ZeRO stage {saved} and this plan is ZeRO stage {plan.zero_stage}; DeepSpeed's "
            "universal checkpoint converts only between ZeRO 1-3 layouts",
        )
    if ckpt.meta.get("pp", 1) > 1 or plan.pp > 1:
        raise LauncherError("run.resume", str(ckpt.path), "resume pipeline-parallel checkpoints with the same plan",
                            problem="changing the layout of a pipeline-parallel checkpoint is not supported")


def _alias_model_states(directory: Path) -> None:
    """DeepSpeed names the model-states file by the *loading* stage (ZeRO-3: zero_pp_rank_0_..., else mp_rank_00_...),
    and ds_to_universal keeps the saving stage's name; the weights come from zero/, the file only carries the client
    and scheduler state, so both names point at the same file and either stage can load it."""
    names = [directory / "mp_rank_00_model_states.pt", directory / "zero_pp_rank_0_mp_rank_00_model_states.pt"]
    present = [n for n in names if n.exists()]
    for name in names:
        if present and not name.exists():
            shutil.copyfile(present[0], name)


def _bridge_optimizer_state(directory: Path) -> None:
    """ZeRO-3's universal loader reads the Adam step and hyper-parameters from `optimizer_state_dict` in
    zero/optimizer_state.pt, which ds_to_universal writes only for ZeRO-3 sources: add it for ZeRO-1/2 sources, from
    the per-parameter step files the conversion wrote, so a ZeRO-2 run can resume under ZeRO-3."""
    import torch

    path = directory / "zero" / "optimizer_state.pt"
    state = torch.load(path, weights_only=False)
    if "optimizer_state_dict" in state:
        return
    step_file = next((directory / "zero").glob("*/step.pt"), None)
    step = torch.load(step_file, weights_only=False) if step_file else 0
    state["optimizer_state_dict"] = {"state": {0: {"step": step}}, "param_groups": state.get("param_groups", [])}
    torch.save(state, path)


def universal_path(ckpt: Checkpoint) -> Path:
    return ckpt.path.with_name(f"{ckpt.path.name}_universal")


def convert(ckpt: Checkpoint, python: str = sys.executable) -> Checkpoint:
    """Rank 0 only. Reuses a complete earlier conversion; otherwise converts into a temporary dir and renames."""
    final = universal_path(ckpt)
    if final.is_dir() and not problems(final):
        return Checkpoint(final, ckpt.global_step, json.loads((final / COMPLETE).read_text()))
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    cmd = [python, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt.path),
           "--output_folder", str(tmp), "--inject_missing_state", "--num_extract_workers", "1", "--num_merge_workers", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"ds_to_universal failed on {ckpt.path}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    _alias_model_states(tmp)
    _bridge_optimizer_state(tmp)
    os.replace(tmp, final)
    meta = {**ckpt.meta, "universal": True, "converted_from": str(ckpt.path), "files": manifest(final)}
    write_atomic(final / COMPLETE, json.dumps(meta, indent=2, sort_keys=True))
    return Checkpoint(final, ckpt.global_step, meta)
