"""How many tasks (processes and threads) a run has at most: what AUTORESEARCH_TASKS must leave room for.

    python bench/task_peak.py --seconds S [--every 0.05]

Counts the tasks of the whole machine (/proc/*/task) every `--every` seconds for S seconds (or until SIGTERM) and
prints the count at the start, the peak and their difference: run beside one training run and nothing else, the
difference is that run's evaluator, experiment and compiler workers together (more than the run alone is capped at).
Used by bench/h200_session.sh's `tasks` phase.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time


def count() -> int:
    total = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):  # ended meanwhile
                total += len(os.listdir(f"/proc/{pid}/task"))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--every", type=float, default=0.05)
    args = parser.parse_args()
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    start = peak = count()
    deadline = time.monotonic() + args.seconds
    while not stopped and time.monotonic() < deadline:
        peak = max(peak, count())
        time.sleep(args.every)
    print(f"tasks: {start} at the start, {peak} at the peak, {peak - start} more", flush=True)


if __name__ == "__main__":
    main()
