"""The experiment's process: what every run imports, then train.py once the evaluator says "go".

The evaluator forks the experiment from a process that has already imported torch, the harness and
torch's compiler (which torch.export needs too) and rehearsed the model's export (`prepare`), so a run
starts at once (evaluator/confined.py). Where it cannot fork into the sandbox, it starts
`python -m autoresearch.harness.boot` instead, which prepares while the previous experiment is still
training. On a CPU that work takes cores from the run that trains meanwhile, but not its budget: there
the budget is that run's own CPU time (evaluator/clock.py).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import resource
import runpy
import sys
import warnings

from autoresearch.evaluator import joining, run_user
from autoresearch.evaluator.tasks import MACHINE_UID_MAP
from autoresearch.wire import Channel, ChannelClosed

COMPILER = ("torch._dynamo", "torch._inductor.compile_fx", "torch.nn.attention.flex_attention")
_prepared = False
# Torch asks NVML how many GPUs there are before CUDA starts; the sandbox does not offer NVML (CUDA itself works),
# and its warning would open every run's log. Set on import: forked experiments inherit it.
warnings.filterwarnings("ignore", message="Can't initialize NVML", category=UserWarning)


def prepare() -> None:
    """Import what a run needs and rehearse the export once per process (inherited by forks)."""
    global _prepared
    if _prepared:
        return
    from autoresearch import harness  # noqa: F401  (imports torch)

    try:
        for name in COMPILER:
            importlib.import_module(name)
        from autoresearch.harness.handover import rehearse

        rehearse()
    except Exception:
        pass  # the run itself will say what is wrong, if anything
    _prepared = True


def fresh_thread_pool() -> None:
    """Set torch's thread count again in the forked experiment while it runs one thread, which has torch make its
    thread pool anew here rather than in the many threads of train.py's first parallel step. Without it every forked
    CPU run on a 16-core H200 host died at that step, on `Invalid thread pool!` and `terminate called recursively`
    (torch 2.11, BENCHMARKS.md); a run started as a new process (AUTORESEARCH_FORK_SERVER=0) never did."""
    import torch

    torch.set_num_threads(torch.get_num_threads())


def cap_tasks(tasks: int) -> None:
    """At most `tasks` processes and threads for this run and all it starts (evaluator/tasks.py), set before train.py
    runs, where this process is in a user namespace of its own: in the machine's, the kernel would count every
    process of the user."""
    with open("/proc/self/uid_map") as mapping:
        if mapping.read().split() == MACHINE_UID_MAP:
            return
    resource.setrlimit(resource.RLIMIT_NPROC, (tasks, tasks))


def no_core_dumps() -> None:
    """No core dump of this run or of anything it starts, neither a file nor one piped to the system's crash
    reporter (`core_pattern` `|systemd-coredump`, apport), which the kernel starts as root, outside the run's cgroups,
    for each crashing process: a crash would leave gigabytes behind the run, and a train.py that crashed its processes
    without end would have the machine run as many reporters. The kernel pipes no dump where the limit is 1 byte
    (0 stops the files only), and a confined run cannot raise it again: that takes CAP_SYS_RESOURCE outside its
    namespace."""
    resource.setrlimit(resource.RLIMIT_CORE, (1, 1))


def run(channel: Channel) -> None:
    """Wait for "go", then run ./train.py as `python train.py` would."""
    fresh_thread_pool()
    no_core_dumps()
    try:
        header, _ = channel.receive()
    except ChannelClosed:
        sys.exit(0)  # the evaluator went away before this run was needed
    if header.get("op") != "go":
        sys.exit(f"autoresearch: expected 'go' from the evaluator, got {header!r}")
    if tasks := header.get("tasks"):
        cap_tasks(int(tasks))
    sys.argv = ["train.py"]
    sys.path[0:1] = [""]  # as `python train.py` in this directory: its own modules first
    runpy.run_path("train.py", run_name="__main__")


def _keep_only(channel: int) -> None:
    """Close every descriptor this process inherited but the standard three and the channel's."""
    for fd in [int(name) for name in os.listdir("/proc/self/fd")]:
        if fd > 2 and fd != channel:
            with contextlib.suppress(OSError):
                os.close(fd)


def main() -> None:
    channel = Channel.from_env()
    if channel is None:
        sys.exit("autoresearch.harness.boot is started by the evaluator, not by hand: run `python train.py`")
    if sys.argv[1:2] == [run_user.AS_USER]:  # first, before anything is imported or written (evaluator/run_user.py)
        joining.drop_privileges(int(sys.argv[2]))
        _keep_only(channel.sock.fileno())  # not the user namespace's descriptor bubblewrap was given (red team)
    prepare()
    run(channel)


if __name__ == "__main__":
    main()
