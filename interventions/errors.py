"""Re-export: the error type lives in `modarb_tasks.errors`, the base layer every package may import."""

from modarb_tasks.errors import ModarbError

__all__ = ["ModarbError"]
