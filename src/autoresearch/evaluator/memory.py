"""How much memory one run may hold: its share of the machine's, so that a train.py that takes all of it is killed
for it, and not the loop, another worker's run or your session.

When the machine runs out of memory, the kernel's OOM killer kills the process that holds the most. A train.py that
spreads its memory over many small processes (within its cap of tasks, evaluator/tasks.py) left the loop itself as
the biggest one: the night ended there. So where a run's cgroup can be made (evaluator/run_group.py: a loop run as
root, below its cgroup on v1, beside it on v2 where the parent hands the memory controller down) its memory is
limited: to MEMORY_ENV, else to its worker's share of what the machine has (or the container's limit, if lower),
less a reserve for the loop and the system (`share`; the loop sets MEMORY_ENV for each of several workers,
loop/workers.py, and tells every evaluator the share it found, sandbox.evaluator_env). The run's evaluator holds the
same share, the run's group inside its own (referee.py's `_hold_the_share`): what the run sends, and the graph it hands
over, are taken in and run there, where a train.py could otherwise have memory held for it. At the limit the kernel
takes the group's cache back, then kills within it, the run's processes first (`kill_first`): the whole run at once
under cgroup v2, its biggest process under v1 (the loop records a crash either way). The share holds swap too,
where the kernel accounts it.

A shell agent's turn of a loop run as root holds at most AGENT_MEMORY_ENV (`agent_memory`; unset, the reserve), its
processes and what it writes in a tmpfs together (agents/turn_cgroups.py): what the runs' shares leave.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Mapping
from pathlib import Path

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import cgroups
from autoresearch.evaluator.run_group import RunGroup

MEMORY_ENV = "AUTORESEARCH_RUN_MEMORY"  # the most memory one run may hold: "24G", "512M", bytes; "0": no limit
AGENT_MEMORY_ENV = "AUTORESEARCH_AGENT_MEMORY"  # the most one shell agent's turn may hold, as MEMORY_ENV
RESERVE_SHARE, RESERVE_LEAST = 0.1, 2 << 30  # the machine's memory kept from the runs: a tenth, at least 2 GiB
LEAST_SHARE = 2 << 30  # the least a run and its evaluator are given
MOST_WEIGHTS = 2**36  # 64 GiB: the largest hand-over taken where memory is not limited
# How much sooner than its evaluator a run's processes are killed for memory (oom_score_adj, added to the
# evaluator's, at most 1000): before the evaluator and the loop (0), after a shell agent's turn (1000,
# agents/command_agent.py). Within the evaluator's share the kernel adds half the share to a run process's size.
RUN_OOM_SCORE_ADJ = 500
OOM_SCORE_ADJ_MAX = 1000
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_UNLIMITED = 1 << 60  # v1's "no limit" is 2^63 rounded down to a page; v2 writes "max"


def run_memory(env: Mapping[str, str] = os.environ) -> int:
    """The most memory, in bytes, a run may hold (MEMORY_ENV; `share(1)` where unset), 0 for no limit."""
    return _limit_in(env, MEMORY_ENV, share(1), "a run", "this machine's less a reserve")


def agent_memory(env: Mapping[str, str] = os.environ) -> int:
    """The most memory, in bytes, a shell agent's turn may hold (AGENT_MEMORY_ENV; unset, what the runs' shares
    leave: `reserve()`), 0 for no limit."""
    return _limit_in(env, AGENT_MEMORY_ENV, reserve(), "an agent's turn", "what the runs' shares leave")


def _limit_in(env: Mapping[str, str], name: str, unset: int, who: str, what: str) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return unset
    found = re.fullmatch(r"(\d+)\s*([KMGT]?)(?:I?B)?", raw.upper()) if raw.isascii() else None
    if found is None:
        raise AutoresearchError(
            f"{name} takes an amount of memory, such as 24G or 512M (got {raw!r})",
            hint=f"or 0 for no limit; unset, {who} may hold {amount(unset)}, {what}",
        )
    return int(found[1]) * _UNITS[found[2]]


def reserve(machine: int | None = None) -> int:
    """What the runs' shares leave of `machine` bytes (this machine's, or its container's limit): RESERVE_SHARE of it,
    at least RESERVE_LEAST; 0 where the machine's memory cannot be read."""
    machine = machine if machine is not None else total()
    return max(RESERVE_LEAST, int(machine * RESERVE_SHARE)) if machine else 0


def share(workers: int, machine: int | None = None) -> int:
    """Each of `workers` runs' share of `machine` bytes (this machine's, or its container's limit) less the reserve,
    its evaluator's memory with it, and at least LEAST_SHARE (an honest tiny run and its evaluator held up to 0.85 GiB,
    page cache included: many workers on a small machine share more than it has, rather than fail honest runs); 0 (no
    limit) where the machine's memory cannot be read."""
    machine = machine if machine is not None else total()
    if not machine:
        return 0
    return max((machine - reserve(machine)) // max(workers, 1), LEAST_SHARE)


def shares(workers: int, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """MEMORY_ENV for each of `workers` runs on this machine: {} where you set it (each run gets that) or the
    machine's memory cannot be read."""
    if env.get(MEMORY_ENV, "").strip() or not (each := share(workers)):
        return {}
    return {MEMORY_ENV: str(each)}


@functools.cache
def total() -> int:
    """The memory this process's processes may hold together, in bytes: the machine's, or its cgroup's limit if
    lower (a container's); 0 where neither can be read. Read once: the loop's share of it, told to every evaluator
    (sandbox.evaluator_env), is not to change with a read that fails later."""
    found = re.search(r"^MemTotal:\s+(\d+) kB", cgroups.text("/proc/meminfo"), re.MULTILINE)
    machine = int(found[1]) << 10 if found else 0
    for own, _ in cgroups.own_folders("memory"):
        for name in ("memory.limit_in_bytes", "memory.max"):  # v1's, v2's
            limit = cgroups.text(own / name).strip()
            if limit.isdigit() and int(limit) < _UNLIMITED:
                machine = min(machine, int(limit)) if machine else int(limit)
    return machine


def most_weights(env: Mapping[str, str] = os.environ) -> int:
    """The most bytes of weights a run may hand over (and its graph declare): the evaluator holds about three copies
    of them as it takes them in (the bytes received, their copy, the tensors they load into), outside the run's group,
    so a quarter of the run's share keeps that within it (a run made its evaluator hold 2.2 GiB beyond its 640 MiB,
    red team); MOST_WEIGHTS where memory is not limited."""
    memory = run_memory(env)
    return min(MOST_WEIGHTS, memory // 4) if memory else MOST_WEIGHTS


def limits(memory: int, as_one: bool = True) -> dict[str, dict[str, str]]:
    """A run's group's limits (evaluator/run_group.py) for `memory` bytes (0: none): no swap, where the kernel
    accounts it (a run at its share would go on in swap, as much as the machine has, slowing every run beside it);
    `as_one`, under v2 an OOM kill takes the whole group (memory.oom.group), as a run's score would be lost anyway.
    Not the evaluator's, which holds the run's group and the evaluator, which then lives to say why (`kill_first`)."""
    if not memory:
        return {}
    return {"memory": {"memory.max": str(memory), "memory.swap.max": "0", "memory.oom.group": "1" if as_one else "0"}}


def kill_first() -> None:
    """Make this process, a run's first, and all it starts the kernel's first to kill for memory: RUN_OOM_SCORE_ADJ
    above its evaluator's, whose child it is (a loop started with one of its own above 500 gave its runs less than its
    evaluator had: red team). Within its evaluator's share, which holds the evaluator too, the kernel takes the run,
    not the evaluator (BROKE on cgroup v2, where the evaluator's group, at the same share as the run's and with the
    evaluator's own memory on top, ran out first and took the evaluator along with the run: its log said nothing, its
    reason only that it went past its share). A run may raise it, not lower it below what a loop run as root set
    (CAP_SYS_RESOURCE); lowered, it is killed as the biggest process, and a crash all the same."""
    with contextlib.suppress(OSError, ValueError):
        adj = Path("/proc/self/oom_score_adj")
        adj.write_text(str(min(OOM_SCORE_ADJ_MAX, int(adj.read_text()) + RUN_OOM_SCORE_ADJ)))


def killed(group: RunGroup) -> bool:
    """Whether the kernel killed a process of the run for its limit (the count memory.events keeps; v1's in
    memory.oom_control)."""
    return group.count("memory.events", "oom_kill") > 0


def amount(memory: int) -> str:
    """`memory` bytes as a person reads them."""
    if not memory:
        return "any amount"
    return f"{memory / (1 << 20):.0f} MiB" if memory < 1 << 30 else f"{memory / (1 << 30):.1f} GiB"
