"""What the user asked for: the typed schema (schema.py, topology.py), Hydra composition and CLI (compose.py,
hydra_cli.py), the preset catalog (catalog.py), and the checks of the user's inputs on the launching host before
anything is written: paths and files (inputs.py), outside services - W&B, the Hugging Face Hub (services.py).

May import: launcher.errors, launcher.secrets, launcher.checkpoint (to resolve run.resume), launcher.data (to read
the data file as the ranks will). Never the plan, launch or train side.
"""
