"""A user's own script (Trainer, accelerate, plain DeepSpeed) under the plan: launch.py (checks and the rank program,
on the launching host), entry.py (`python -m launcher.script.entry`, in each rank: resume, logs, failure report),
site/ (a sitecustomize on the script's PYTHONPATH), trainer_callback.py (SaveOnSignal for Trainer scripts).

May import: launcher.errors, launcher.render (the rank program types), launcher.checkpoint, and the shared modules.
"""
