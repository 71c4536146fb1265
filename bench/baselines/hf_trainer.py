"""Baseline: Hugging Face Trainer with DeepSpeed ZeRO-3 set up as LLaMA-Factory's examples/deepspeed/ds_z3_config.json
(hiyouga/LLaMA-Factory at 1d6e8b2: "auto" sizes the Trainer fills in, overlap_comm off), bf16, the Trainer's default
optimizer, gradient clipping 1.0.

torchrun --standalone --nproc_per_node N bench/baselines/hf_trainer.py --spec '{...}' --out result.json
"""
from __future__ import annotations

import common  # first: its import time is the script's start
import tempfile

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

AUTO = "auto"
DS_CONFIG = {  # the settings of LLaMA-Factory's ds_z3_config.json
    "train_batch_size": AUTO, "train_micro_batch_size_per_gpu": AUTO, "gradient_accumulation_steps": AUTO,
    "gradient_clipping": AUTO, "zero_allow_untested_optimizer": True,
    "fp16": {"enabled": AUTO, "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16, "hysteresis": 2,
             "min_loss_scale": 1},
    "bf16": {"enabled": AUTO},
    "zero_optimization": {"stage": 3, "overlap_comm": False, "contiguous_gradients": True, "sub_group_size": 1e9,
                          "reduce_bucket_size": AUTO, "stage3_prefetch_bucket_size": AUTO,
                          "stage3_param_persistence_threshold": AUTO, "stage3_max_live_parameters": 1e9,
                          "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True},
    "comms_config": {"verbose": False},
    "monitor_config": {"enabled": True, "tag": "DeepSpeedMonitor", "csv_monitor": {"enabled": False}},
}


class RandomTokens(torch.utils.data.Dataset):
    """The same micro batches as the other baselines: item i is row i % micro of the batch (rank, step) would get."""

    def __init__(self, spec: common.Spec, world: int) -> None:
        self.spec, self.world = spec, world

    def __len__(self) -> int:
        return self.spec.steps * self.spec.micro_batch_size * self.world

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        per_step = self.spec.micro_batch_size * self.world
        step, within = divmod(i, per_step)
        rank, row = divmod(within, self.spec.micro_batch_size)
        ids = common.tokens(self.spec, rank, step)[row]
        return {"input_ids": ids, "labels": ids}


class Timing(TrainerCallback):
    def __init__(self, timer: common.StepTimer, device: torch.device) -> None:
        self.timer, self.device = timer, device

    def on_step_begin(self, args, state, control, **kwargs):
        self.timer.begin()

    def on_step_end(self, args, state, control, **kwargs):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timer.end(float("nan"))


def main() -> None:
    spec, args = common.parse()
    rank, _, world, device, _ = common.dist_env()
    timer = common.StepTimer()
    with tempfile.TemporaryDirectory() as out_dir:
        # Created before the model, as LLaMA-Factory does: under ZeRO-3 the model is then built partitioned.
        training_args = TrainingArguments(
            output_dir=out_dir, per_device_train_batch_size=spec.micro_batch_size, gradient_accumulation_steps=1,
            max_steps=spec.steps, learning_rate=spec.lr, adam_beta2=0.95, max_grad_norm=spec.grad_clip,
            bf16=spec.precision == "bf16", deepspeed=DS_CONFIG, logging_steps=10**6, save_strategy="no",
            report_to="none", disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False,
            seed=spec.seed,
        )
        model = common.build_model(spec, common.dtype(spec))
        timer.mark("model_built")
        trainer = Trainer(model=model, args=training_args, train_dataset=RandomTokens(spec, world),
                          callbacks=[Timing(timer, device)])
        trainer.train()
        optimizer = type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer)
    if rank == 0:
        timer.write(args.out, spec, device, world, what="HF Trainer + DeepSpeed ZeRO-3 (LLaMA-Factory config)",
                    optimizer=f"{optimizer.__name__} ({training_args.optim})")


if __name__ == "__main__":
    main()
