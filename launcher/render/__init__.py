"""Pure renderers: Plan -> the artifacts written into the run dir (DeepSpeed JSON, launch script, environment)."""
