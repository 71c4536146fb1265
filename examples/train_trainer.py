"""Fine-tune the tiny model with transformers' Trainer: an ordinary Trainer script, run unchanged by the launcher.

    python -m launcher +plan=zero3 script=examples/train_trainer.py -- --max_steps 20 --save_steps 10

The launcher adds --deepspeed <run>/ds_config.json, --output_dir <run>/checkpoints, the plan's
--per_device_train_batch_size and --gradient_accumulation_steps (and --use_cpu on CPU), and, when a complete
checkpoint-N exists, --resume_from_checkpoint: pass it to trainer.train() as below. The learning rate, schedule and
steps are the script's (--learning_rate, --lr_scheduler_type, --max_steps ...). `SaveOnSignal` makes a Ctrl-C in
the launcher's terminal (or Slurm's pre-timeout signal) save a checkpoint-N before the script stops.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from launcher import tiny
from launcher.script.trainer_callback import SaveOnSignal


@dataclass
class DataArguments:
    seq_len: int = 256


class ShowEngine(TrainerCallback):
    """Rank 0 prints the settings the DeepSpeed engine runs with, and the step training starts from."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            print("engine settings:", json.dumps(tiny.engine_settings(self.trainer.model_wrapped)), flush=True)
            print(f"training from global step {state.global_step}", flush=True)


def main() -> None:
    args, data = HfArgumentParser((TrainingArguments, DataArguments)).parse_args_into_dataclasses()
    tiny.skip_shm_comm_op()
    # as Hugging Face's example scripts do: args.device sets up the process group, which ZeRO-3's model init needs
    print(f"process {args.process_index} of {args.world_size} on {args.device}", flush=True)
    tiny.share_process_group_with_deepspeed()  # CPU only matters: see its docstring
    tok = tiny.tokenizer()
    trainer = Trainer(model=tiny.model(tok, seed=args.seed), args=args, train_dataset=tiny.dataset(tok, data.seq_len),
                      data_collator=lambda rows: tiny.collate(rows, tok.pad_token_id))
    trainer.add_callback(ShowEngine(trainer))
    trainer.add_callback(SaveOnSignal())
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)


if __name__ == "__main__":
    main()
