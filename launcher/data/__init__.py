"""Training data, in the order it flows: sources.py and registry.py (which data sets: files, folders, hub ids, a
LLaMA-Factory dataset_info.json), formats.py and rows.py (reading JSON/JSONL, encodings, rows -> conversations with
LLaMA-Factory's columns and tags, drops by reason), selection.py and mixing.py (the rows each set gives, the
validation split, the mix), tools.py (tool calls for templates with and without tool support), tokenization.py
(tokenizer, chat template, label masking, truncation), cache.py (the tokenized sets kept between launches). Used by
the ranks and, for the input checks, by the launching host.

May import: launcher.errors, launcher.assets.
"""
