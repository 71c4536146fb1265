"""Fine-tune the tiny model with transformers' Trainer: an ordinary Trainer script, run unchanged by the launcher.

    python -m launcher +plan=zero3 script=examples/train_trainer.py -- --max_steps 20 --save_steps 10

The launcher adds --deepspeed <run>/ds_config.json, --output_dir <run>/checkpoints, the plan's
--per_device_train_batch_size and --gradient_accumulation_steps (and --use_cpu on CPU), and, when a complete
checkpoint-N exists, --resume_from_checkpoint: pass it to trainer.train() as below. The learning rate, schedule and
steps are the script's (--learning_rate, --lr_scheduler_type, --max_steps ...). `SaveOnSignal` makes a Ctrl-C in
the launcher's terminal (or Slurm's pre-timeout signal) save a checkpoint-N before the script stops.

Under `+plan=sp` the Trainer splits each sequence over plan.sp ranks (DeepSpeed's Ulysses, set up by accelerate from
the launcher's environment): its batches need `position_ids` and a length divisible by sp, which `collate` gives.
On CPU, gloo gathers only equal shapes, so the ranks' batches must have one length: pass --pad_to_seq_len there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from launcher import tiny
from launcher.script.trainer_callback import SaveOnSignal


@dataclass
class DataArguments:
    seq_len: int = 256
    pad_to_seq_len: bool = False  # every batch --seq_len wide (sequence parallel over gloo needs equal lengths)


def collate(rows: list[dict[str, list[int]]], pad_id: int, width: int) -> dict[str, torch.Tensor]:
    """tiny.collate, right-padded to `width` or to a multiple of 8 (the sequence-parallel degree must divide it), with
    the position ids that sequence parallel needs (each rank holds a slice of the row)."""
    batch = tiny.collate(rows, pad_id)
    have = batch["input_ids"].shape[1]
    extra = (width or -(-have // 8) * 8) - have
    for key, value in (("input_ids", pad_id), ("labels", tiny.IGNORE_INDEX), ("attention_mask", 0)):
        batch[key] = torch.nn.functional.pad(batch[key], (0, extra), value=value)
    batch["position_ids"] = torch.arange(have + extra).expand(len(rows), -1).clone()
    return batch


class ShowEngine(TrainerCallback):
    """Rank 0 prints the settings the DeepSpeed engine runs with, and the step training starts from."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            print("engine settings:", json.dumps(tiny.engine_settings(self.trainer.model_wrapped)), flush=True)
            print(f"sequence parallel size {self.trainer.get_sp_size()}", flush=True)
            print(f"training from global step {state.global_step}", flush=True)


def main() -> None:
    args, data = HfArgumentParser((TrainingArguments, DataArguments)).parse_args_into_dataclasses()
    tiny.skip_shm_comm_op()
    # as Hugging Face's example scripts do: args.device sets up the process group, which ZeRO-3's model init needs
    print(f"process {args.process_index} of {args.world_size} on {args.device}", flush=True)
    tiny.share_process_group_with_deepspeed()  # CPU only matters: see its docstring
    tok = tiny.tokenizer()
    trainer = Trainer(model=tiny.model(tok, seed=args.seed), args=args, train_dataset=tiny.dataset(tok, data.seq_len),
                      data_collator=lambda rows: collate(rows, tok.pad_token_id, data.seq_len * data.pad_to_seq_len))
    trainer.add_callback(ShowEngine(trainer))
    trainer.add_callback(SaveOnSignal())
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)


if __name__ == "__main__":
    main()
