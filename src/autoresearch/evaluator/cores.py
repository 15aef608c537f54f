"""Which CPU cores a run may use: the CPUs it may run on, a cgroup's CPU quota (which PyTorch does not see), and a
worker's own share of the CPUs.

`os.cpu_count()` counts the machine's CPUs. A container started with a CPU limit (`docker run --cpus 4`, a
Kubernetes pod's `limits.cpu`, a systemd slice's `CPUQuota=`) may run on every one of them but gets only its
quota's share of their time, and PyTorch starts a thread per CPU it may run on. On a CPU the budget is counted
in CPU time divided by the cores the run is given (evaluator/clock.py); counting 64 cores where the quota
gives 4 would stretch each budget second to 16 wall seconds, past the run's hard timeout. So a run takes at
most the quota's cores (rounded up) as threads, and its clock divides by the quota itself where that is less:
a budget second stays about one wall second even on half a core.

Several workers on one machine each get CPUs of their own (`shares`; RUN_CPUS_ENV in their evaluators' environment,
which `pin` applies). A train.py that kept every core busy beside the others' runs slowed them (measured on an H200:
a run beside it took 180 steps in place of 189, and its weights came too late to count), and would be judged
against a baseline so handicapped. Pinned apart, the runs took the steps they take alone; a run cannot widen its
pin (evaluator/syscalls.py refuses it `sched_setaffinity`). A coding agent's turn runs beside the runs too (one
worker's as well), and could load the CPU as much: where runs train on GPUs, the agents get whole cores of their own
(`agent_cores`, `pins`; AGENT_CPUS_ENV, applied by agents/fence.py), the runs the rest.

Nothing here may fail a run: whatever the cgroup files say, an unreadable answer is "no quota". A worker's CPUs that
cannot be had stop the loop (`pin`): no run trains unpinned beside the others.
"""

from __future__ import annotations

import glob
import math
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator.cgroups import folders, text

DEVICE_ENV = "AUTORESEARCH_DEVICE"  # the device train.py trains on ("cpu", "cuda:1"), over device.pick_device's choice
PEAK_FLOPS_ENV = "AUTORESEARCH_PEAK_FLOPS"  # the device's peak bf16 FLOP/s for MFU, where device.py's table lacks it
RUN_CPUS_ENV = "AUTORESEARCH_RUN_CPUS"  # "0,1,2,3": the CPUs a worker's evaluators and runs are pinned to
AGENT_CPUS_ENV = "AUTORESEARCH_AGENT_CPUS"  # "15,31": the CPUs a shell agent's turn is pinned to; the loop sets it
AGENT_CORES_ENV = "AUTORESEARCH_AGENT_CORES"  # whole cores set aside for agents' turns ("0": none), over `agent_cores`
RUN_CORES = 4  # the fewest whole cores a GPU run keeps where agents get one of their own by default (BENCHMARKS.md)
TOPOLOGY = Path("/sys/devices/system/cpu")


def usable_cores() -> int:
    """The CPUs this process may run on, at most its CPU quota (rounded up); at least 1."""
    return _usable(quota())


def run_cores(torch_threads: int) -> tuple[int, float]:
    """(threads, the cores its clock divides by) for a run on the CPU, from the threads PyTorch would start
    (OMP_NUM_THREADS, else its CPUs): no more threads than usable cores, and a fractional quota counted as it is."""
    limit = quota()
    threads = max(1, min(torch_threads, _usable(limit)))
    return threads, min(float(threads), limit) if limit is not None else float(threads)


def _usable(limit: float | None) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS has no affinity to ask
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, math.ceil(limit)) if limit is not None else cpus)


def shares(count: int) -> list[tuple[int, ...]] | None:
    """The CPUs this process may run on, split in order into `count` disjoint shares of whole cores (a core's
    hyperthreads share its units, so they go to one worker); with fewer cores than shares, of single CPUs; None
    with fewer CPUs than shares, or where the CPUs cannot be asked for."""
    cores = _cores()
    if cores is None or count < 1 or sum(map(len, cores)) < count:
        return None
    units = cores if len(cores) >= count else [[cpu] for cpu in sorted(cpu for core in cores for cpu in core)]
    return _split(units, count)


def agent_cores(count: int, on_gpu: bool, env: Mapping[str, str] = os.environ) -> int:
    """The whole cores set aside for a shell agent's turns beside `count` workers: AGENT_CORES_ENV where it is set
    (ValueError for what is not a number); else, where the runs train on GPUs, one per worker if each run keeps
    RUN_CORES; else none (a run on the CPU would lose its share of the compute)."""
    if asked := env.get(AGENT_CORES_ENV, "").strip():
        if not asked.isdigit():
            raise ValueError(f"{AGENT_CORES_ENV}={asked!r} is not a number of cores")
        return int(asked)
    return count if on_gpu and len(_cores() or []) - count >= count * RUN_CORES else 0


def pins(count: int, aside: int = 0) -> tuple[list[dict[str, str]], dict[str, str]]:
    """RUN_CPUS_ENV for each of `count` workers on this machine, in order, and AGENT_CPUS_ENV for the agents' turns.
    The last `aside` whole cores are the agents', and the runs split the rest, one worker's too (ValueError where a
    run would have no core). With none aside, each worker gets its share (`shares`), the agents every CPU; {} for each
    where there is one worker, or the CPUs cannot be split so."""
    if aside and (cores := _cores()) is not None:
        if len(cores) - aside < count:
            raise ValueError(
                f"{aside} of {len(cores)} cores for the agents leave fewer than one for each of {count} runs"
            )
        runs, theirs = _split(cores[:-aside], count), [cpu for core in cores[-aside:] for cpu in core]
        return [{RUN_CPUS_ENV: _listed(cpus)} for cpus in runs], {AGENT_CPUS_ENV: _listed(theirs)}
    split = shares(count) if count > 1 else None
    return ([{RUN_CPUS_ENV: _listed(cpus)} for cpus in split] if split else [{} for _ in range(count)]), {}


def check_device_settings(env: Mapping[str, str] = os.environ) -> None:
    """Refuse a $AUTORESEARCH_DEVICE that names no device or a $AUTORESEARCH_PEAK_FLOPS that is no positive number, up
    front: each run read them, and crashed (red team), with the hint for a changed apparatus, a new workspace."""
    if (device := env.get(DEVICE_ENV)) and not re.fullmatch(r"cpu|mps|cuda(:[0-9]+)?", device):
        raise AutoresearchError(
            f"${DEVICE_ENV} is {device!r}: no device train.py can train on",
            hint="set it to cpu, cuda, cuda:N or mps, or unset it to let the loop choose",
        )
    if flops := env.get(PEAK_FLOPS_ENV):
        try:
            good = math.isfinite(value := float(flops)) and value > 0
        except ValueError:
            good = False
        if not good:
            raise AutoresearchError(
                f"${PEAK_FLOPS_ENV} is {flops!r}: no peak FLOP/s",
                hint="set it to the device's peak bf16 FLOP/s (989.5e12 for an H100), or unset it",
            )


def runs_train_on_cpu(env: Mapping[str, str]) -> bool:
    """Whether runs will train on the CPU (device.pick_device's answer), told without importing torch."""
    if device := env.get(DEVICE_ENV):
        return device.startswith("cpu")
    if sys.platform == "darwin":
        return False  # Apple's GPU, mostly
    return env.get("CUDA_VISIBLE_DEVICES") in ("", "-1") or not glob.glob("/dev/nvidia[0-9]*")


def _cores() -> list[list[int]] | None:
    """The CPUs this process may run on, by core, in order; None where they cannot be asked for."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    cores: dict[frozenset[int], list[int]] = {}
    for cpu in cpus:  # by the CPUs of its core, as the kernel lists them ("0,64" or "0-1"); alone where unreadable
        siblings = _cpu_list(text(TOPOLOGY / f"cpu{cpu}" / "topology" / "thread_siblings_list")) or {cpu}
        cores.setdefault(frozenset(siblings), []).append(cpu)
    return list(cores.values())


def _split(units: list[list[int]], count: int) -> list[tuple[int, ...]]:
    """`units` (cores, or single CPUs) split in order into `count` shares, as even as they can be."""
    size, extra = divmod(len(units), count)
    split, start = [], 0
    for i in range(count):
        end = start + size + (i < extra)
        split.append(tuple(sorted(cpu for unit in units[start:end] for cpu in unit)))
        start = end
    return split


def _listed(cpus) -> str:
    return ",".join(map(str, sorted(cpus)))


def pin(env: Mapping[str, str] = os.environ) -> None:
    """Pin every thread of this process, and so all it starts, to the CPUs RUN_CPUS_ENV names; nothing where it
    names none. AutoresearchError where it names them wrongly, or this process cannot have them (a CPU taken offline,
    or out of the loop's cpuset, since the loop split them): its run would train unpinned, beside the other workers'
    on their cores."""
    listed = env.get(RUN_CPUS_ENV, "")
    cpus = _cpu_list(listed)
    if listed.strip() and not cpus:  # set by hand, wrong: the run would train on every CPU, the others' too
        raise AutoresearchError(
            f"{RUN_CPUS_ENV} takes a CPU list such as 0-3,8 (got {listed!r})",
            hint=f"the loop sets it for each of its workers: unset {RUN_CPUS_ENV}, or list CPUs of this machine",
        )
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except (OSError, ValueError):
        threads = [0]
    for tid in threads:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError as error:
            if tid in (0, os.getpid()):  # this process's own thread; another may have ended meanwhile
                raise AutoresearchError(
                    f"the CPUs {_listed(cpus)} of this worker's runs ({RUN_CPUS_ENV}) cannot be had now: "
                    f"{error.strerror}",
                    hint="a CPU was taken offline or out of the loop's cpuset since the loop split them between its "
                    "workers: start the loop again, and it splits the CPUs it finds then",
                ) from None


def _cpu_list(text: str) -> set[int]:
    """The CPUs of a kernel CPU list ("0-3,8,10-11"); empty where it is not one."""
    cpus: set[int] = set()
    try:
        for part in text.strip().split(","):
            first, _, last = part.partition("-")
            cpus.update(range(int(first), int(last or first) + 1))
    except ValueError:
        return set()
    return cpus


def quota() -> float | None:
    """This process's tightest CPU quota, in cores; None if there is none or it cannot be read."""
    try:
        return quota_of(text("/proc/self/cgroup"), text("/proc/self/mountinfo"))
    except Exception:  # a thread count is never worth a failed run
        return None


def quota_of(membership: str, mountinfo: str) -> float | None:
    """The tightest CPU quota on the process's cgroup and the cgroups above it that are mounted here, in cores
    (`membership`, `mountinfo`: as `folders` takes them). cgroup v2 keeps a quota in `cpu.max` ("200000
    100000"; "max 100000" for none); v1 in `cpu.cfs_quota_us` (-1 for none) over `cpu.cfs_period_us`."""
    quotas = []
    for level, top in folders("cpu", membership, mountinfo):
        read = _v1_quota if (level / "cpu.cfs_quota_us").exists() else _v2_quota
        while True:  # the process's cgroup, then each one above it up to the mount's root
            if (found := read(level)) is not None:
                quotas.append(found)
            if level == top:
                break
            level = level.parent
    return min(quotas, default=None)


def _v2_quota(directory: Path) -> float | None:
    fields = text(directory / "cpu.max").split()
    return _ratio(fields[0], fields[1]) if len(fields) == 2 else None


def _v1_quota(directory: Path) -> float | None:
    return _ratio(text(directory / "cpu.cfs_quota_us"), text(directory / "cpu.cfs_period_us"))


def _ratio(quota: str, period: str) -> float | None:
    """quota / period in cores, None for no limit ("max", -1) or what is not a pair of positive integers."""
    try:
        q, p = int(quota), int(period)
        return q / p if q > 0 and p > 0 else None
    except (ValueError, OverflowError):
        return None
