"""Code that runs inside each rank: model, data, engine and the training loop."""
