"""What survives a run: store.py (the atomic commit protocol: temporary directory, fsync, rename, the completion
marker complete.json, retention), universal.py (DeepSpeed's universal checkpoint when the layout changes),
export.py (`python -m launcher.export`: a Hugging Face model directory) and export_parallel.py (tensor/pipeline
shards rebuilt into one state dict).

May import: launcher.errors, launcher.plan (the Plan a checkpoint was saved under), launcher.train.model (building
the model an export loads into).
"""
