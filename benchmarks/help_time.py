"""Seconds ``bayesnas --help`` (and each subcommand's ``--help``) takes, against a bare ``python -c pass`` in the
same process.

The command line parses its arguments before it imports torch, Pyro or ArviZ, so help answers in about the time
Python itself needs to start. Usage: ``python benchmarks/help_time.py [--repeats 5]``; prints the median seconds
of each command and ``ratio=`` (slowest help / bare Python).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = [[], ["search"], ["train"], ["options"], ["diagnose"], ["rank"], ["bench"], ["bench", "compare"]]


def seconds(argv: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        subprocess.run([sys.executable, *argv], check=True, capture_output=True)
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    bare = seconds(["-c", "pass"], args.repeats)
    print(f"python -c pass{'':22} median {bare:.3f} s")
    slowest = 0.0
    for command in COMMANDS:
        value = seconds(["-m", "bayesnas", *command, "--help"], args.repeats)
        slowest = max(slowest, value)
        print(f"bayesnas {' '.join([*command, '--help']):27} median {value:.3f} s")
    print(f"slowest help {slowest:.3f} s; ratio={slowest / bare:.2f} (against bare Python start-up)")


if __name__ == "__main__":
    main()
