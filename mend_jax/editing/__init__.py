"""Applying a trained editor to new facts: the `Editor` API (editor.py), edit requests,
per-task encoding (codecs.py) and editor files (editor_files.py)."""
