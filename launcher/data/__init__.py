"""Training data: formats.py (reading JSON/JSONL in alpaca and sharegpt form, encodings, row-by-row errors),
tokenization.py (tokenizer, chat template, label masking, truncation), cache.py (the tokenized data set kept between
launches). Used by the ranks and, for the input checks, by the launching host.

May import: launcher.errors, launcher.assets.
"""
