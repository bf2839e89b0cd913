"""Moved to `interventions.testing.smoke` (it builds tiny models: test support, not the leaderboard).

Kept so `python -m leaderboard.smoke` and `from leaderboard.smoke import ...` still work; the
import happens on use, so importing `leaderboard` still loads neither torch nor `interventions`.
"""

from __future__ import annotations

import sys


def __getattr__(name: str):
    from interventions.testing import smoke

    return getattr(smoke, name)


def main(argv: list[str] | None = None) -> int:
    from interventions.testing.smoke import main as smoke_main

    return smoke_main(argv)


if __name__ == "__main__":
    sys.exit(main())
