"""torch's thread pool after a fork: how many forked children crash when several threads start parallel work at once.

A process that used torch's thread pool forks; each child starts THREADS threads that call torch.set_num_threads
together (what each new thread does on its first parallel operation). torch rebuilds the pool after a fork in the
first thread that asks for it; were a second thread asking meanwhile given none, the child would die on `Invalid
thread pool!`, as the loop's forked CPU runs did at their first step on the H200 host (torch 2.11). BENCHMARKS.md
has what it found: no child crashed, so that race is not the cause.

    python bench/fork_thread_pool.py --forks 300
"""

from __future__ import annotations

import argparse
import os
import threading

import torch


def child(threads: int) -> int:
    start = threading.Barrier(threads)
    failed: list[str] = []

    def work() -> None:
        start.wait()
        try:
            torch.set_num_threads(torch.get_num_threads())
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
    args = parser.parse_args()
    torch.ones(1 << 20).add_(1)  # the pool exists before the forks, as in the fork server's evaluators
    crashed = 0
    for _ in range(args.forks):
        pid = os.fork()
        if pid == 0:
            os._exit(child(args.threads))
        crashed += os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs: {crashed} of {args.forks} children crashed")


if __name__ == "__main__":
    main()
