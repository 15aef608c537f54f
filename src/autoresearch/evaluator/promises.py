"""What every run is given, as the process that starts evaluators (the loop; a Ray task on its node) found it can be:
the sandbox, an anchor of ours as the sandbox's init, the seccomp filter, its own GPUs' device nodes alone, its cgroup's
limits (by controller).

`sandbox.evaluator_env` says so to each evaluator in one variable, ENV. Each evaluator used to find these for itself,
and one that failed at that moment (short of processes, memory or cgroup ids; a probe timed out) trained its run
without it, saying nothing the loop reads: unconfined, unfiltered, uncapped, or under bubblewrap's own init, which the
run could trace (red teams). An evaluator now gives its run what was promised, or stops: its error stops the loop, and
the experiment, still in flight, is trained on the next start. The loop's own processes never read ENV.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

ENV = "AUTORESEARCH_PROMISED"
SANDBOX = "sandbox"
ANCHOR = "anchor"  # runs are forked into a sandbox around our init (--as-pid-1): evaluator/anchor_probe.py
FILTER = "filter"
GPUS = "gpus"  # a run on GPUs is given its own GPUs' device nodes alone, not every GPU's (evaluator/gpu_nodes.py)
USER = "user"  # a root loop's run is a user of its own, capped by RLIMIT_NPROC (evaluator/run_user.py)
# and the controllers of the run's cgroup limited: "pids" (its cap of tasks), "memory" (its share)


def promised() -> frozenset[str]:
    """What the process that started this evaluator promised its runs (none, for one started by hand)."""
    return frozenset(filter(None, os.environ.get(ENV, "").split(",")))


def said(what: Iterable[str]) -> str:
    return ",".join(sorted(what))
