"""launcher: run an LLM fine-tuning job unchanged on one GB10 box, two, a multi-GPU server or a cluster."""
__version__ = "0.1.0"
