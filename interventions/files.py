"""Re-export: atomic writes live in `modarb_tasks.files`, the base layer every package may import."""

from modarb_tasks.files import write_atomic, write_png

__all__ = ["write_atomic", "write_png"]
