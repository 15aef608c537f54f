"""torch's thread pool after a fork: how many forked children crash when several threads start parallel work at once.

A process that used torch's thread pool forks; each child starts THREADS threads that, all at once, make their first
call into torch's thread pool: `torch.set_num_threads` (`--first set`), or a small operation (`--first op`: each new
thread sets up its threads on its first parallel operation, with the GIL released). `--fresh` has each child call
`boot.fresh_thread_pool()` first, as the loop's forked experiments do. The loop's forked CPU runs died at their first
step on a 16-core H200 host (torch 2.11) with `Invalid thread pool!` until they did that; no child of this script
crashed there or here, either way (BENCHMARKS.md): Python threads reach torch one at a time (the GIL), while the
threads of a training step are torch's own.

    PYTHONPATH=$PWD/src python bench/fork_thread_pool.py --forks 300 --first op --threads 16 [--fresh]
"""

from __future__ import annotations

import argparse
import os
import threading

import torch

from autoresearch.harness import boot


def child(threads: int, first: str, fresh: bool) -> int:
    if fresh:
        boot.fresh_thread_pool()
    start = threading.Barrier(threads)
    failed: list[str] = []

    def work() -> None:
        start.wait()
        try:
            if first == "set":
                torch.set_num_threads(torch.get_num_threads())
            else:
                torch.ones(1 << 12).add_(1)
        except RuntimeError as exc:
            failed.append(str(exc).splitlines()[0])

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if failed:
        print(failed[0], flush=True)
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forks", type=int, default=300)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--first", choices=("set", "op"), default="set")
    parser.add_argument("--fresh", action="store_true", help="boot.fresh_thread_pool() in each child first")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    torch.ones(16).add_(1)  # the pool exists before the forks, as in the fork server; no OpenMP region
    crashed = 0
    for _ in range(args.forks):
        pid = os.fork()
        if pid == 0:
            os._exit(child(args.threads, args.first, args.fresh))
        crashed += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, --first {args.first}, {args.threads} threads"
          f"{', fresh pool' if args.fresh else ''}: {crashed} of {args.forks} children crashed")  # fmt: skip


if __name__ == "__main__":
    main()
