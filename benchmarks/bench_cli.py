"""CLI start-up: `modarb --help` (and each subcommand's --help) vs `python -c "import torch"`.

A user who types `modarb --help` should not wait for lm-eval, transformers and the analyses to
import. The commands run alternately in fresh processes, several rounds, and the report gives
each command's median wall time and its ratio to the median `import torch` of the same rounds.

    python benchmarks/bench_cli.py [--rounds 5] [--out bench_cli.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODARB = str(Path(sys.executable).parent / "modarb")
COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "modarb --help": [MODARB, "--help"],
    "modarb identify --help": [MODARB, "identify", "--help"],
    "modarb reproduce --help": [MODARB, "reproduce", "--help"],
    "modarb leaderboard --help": [MODARB, "leaderboard", "--help"],
}


def wall_time(command: list[str]) -> float:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of every command (default: 5)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            times[name].append(wall_time(command))
    torch_median = statistics.median(times["import torch"])
    report = {name: {"median_s": round(statistics.median(values), 3),
                     "ratio_to_import_torch": round(statistics.median(values) / torch_median, 2),
                     "runs_s": [round(value, 3) for value in values]}
              for name, values in times.items()}
    for name, figures in report.items():
        print(f"{name:<28} {figures['median_s']:>7.2f} s  {figures['ratio_to_import_torch']:>5.2f}x import torch")
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
