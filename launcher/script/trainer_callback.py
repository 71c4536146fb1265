"""`SaveOnSignal`: a transformers.Trainer callback that turns the launcher's stop into a saved checkpoint.

    from launcher.script.trainer_callback import SaveOnSignal
    trainer.add_callback(SaveOnSignal())

A Ctrl-C in the launcher's terminal (and Slurm's pre-timeout SIGUSR1, or SIGTERM) reaches a script's ranks as a
signal. Without this callback a Trainer script stops at once (the signal's default action) and loses the steps since
its last `--save_steps` save; with it, every rank finishes the current step, the Trainer saves `checkpoint-<step>`
and stops, and a rerun of the same command resumes from it. All ranks agree on the step through one all-reduce per
step: ZeRO saves are collective, so one rank must never save alone.
"""
from __future__ import annotations

import signal
from types import FrameType
from typing import Any

from transformers import TrainerCallback

from launcher.train.signals import say

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class SaveOnSignal(TrainerCallback):
    def __init__(self) -> None:
        self.requested = False
        for s in SIGNALS:
            signal.signal(s, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.requested:
            self.requested = True
            say(f"received {signal.Signals(signum).name}: saving at the end of this step")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if _any_rank(self.requested):
            control.should_save = True
            control.should_training_stop = True
        return control


def _any_rank(flag: bool) -> bool:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return t.item() > 0
