"""modarb_tasks: what modarb measures — lm-eval task YAMLs, the data builders behind them, and the metrics."""

from pathlib import Path

TASKS_PATH = str(Path(__file__).resolve().parent / "tasks")
"""Folder to put on lm-eval's include path (``lm_eval --include_path``)."""
