"""What a train.py on another worker of this machine could do to the runs beside it: take the CPU and its memory.

    python bench/neighbour_hog.py [--busy N] [--stream N] [--seconds S]

Starts N processes that spin and N that copy a 256 MB array back and forth (the memory bus), each in a session of
its own (`setsid`: where the kernel groups a session's processes for fair shares, autogroup, every one is a group
of its own), and ends them after S seconds or on SIGTERM. A confined run can do all of this: its sandbox starts it
in a new session and leaves it every core. Used by bench/h200_session.sh's `neighbour` phase, beside runs of the
shipped train.py, to measure what such a neighbour costs a run in steps and val_bpb.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time


def spin() -> None:
    while True:
        pass


def stream() -> None:
    import numpy as np

    a, b = np.ones(1 << 25), np.empty(1 << 25)  # 256 MB each, far beyond any cache
    while True:
        np.copyto(b, a)
        np.copyto(a, b)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stream", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seconds", type=float, default=600)
    args = parser.parse_args()
    children = []
    for work in [spin] * args.busy + [stream] * args.stream:
        pid = os.fork()
        if pid == 0:
            os.setsid()
            work()
        children.append(pid)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        time.sleep(args.seconds)
    finally:
        for pid in children:
            os.kill(pid, signal.SIGKILL)
        for pid in children:
            os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
