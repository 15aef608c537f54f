"""How many tasks (processes and threads) a run has at most: what AUTORESEARCH_TASKS must leave room for; and the
most memory a run and its evaluator held (their group, evaluator/memory.py), where they have one: what
AUTORESEARCH_RUN_MEMORY must leave room for.

    python bench/task_peak.py --seconds S [--every 0.05]

Counts the tasks of the whole machine (/proc/*/task) every `--every` seconds for S seconds (or until SIGTERM) and
prints the count at the start, the peak and their difference: run beside one training run and nothing else, the
difference is that run's evaluator, experiment and compiler workers together (more than the run alone is capped at).
The memory is the largest `memory.current` (v2) or `memory.usage_in_bytes` (v1) of an evaluator's group seen (the run's
lies inside), page cache included.
Used by bench/h200_session.sh's `tasks` phase.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time

from autoresearch.evaluator import cgroups, run_group


def count() -> int:
    total = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):  # ended meanwhile
                total += len(os.listdir(f"/proc/{pid}/task"))
    return total


def run_memory() -> int:
    """The most memory any evaluator's group below this process's memory cgroup holds now."""
    most = 0
    for own, _ in cgroups.own_folders("memory"):
        for group in own.glob(f"{run_group.PREFIX}*"):
            for name in ("memory.current", "memory.usage_in_bytes"):
                if (held := cgroups.text(group / name).strip()).isdigit():
                    most = max(most, int(held))
    return most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--every", type=float, default=0.05)
    args = parser.parse_args()
    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    start = peak = count()
    held = 0
    deadline = time.monotonic() + args.seconds
    while not stopped and time.monotonic() < deadline:
        peak, held = max(peak, count()), max(held, run_memory())
        time.sleep(args.every)
    print(f"tasks: {start} at the start, {peak} at the peak, {peak - start} more", flush=True)
    print(f"memory: a run and its evaluator held {held / 2**30:.2f} GiB at most", flush=True)


if __name__ == "__main__":
    main()
