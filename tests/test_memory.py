"""A run's share of memory (evaluator/memory.py): the setting, each worker's share, and the run's memory group.

A whole run that spreads its memory over many processes is test_red_team.py's
`test_a_train_py_that_spreads_its_memory_over_many_processes_is_killed_within_its_share`."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import memory, run_group, tasks
from autoresearch.evaluator.run_group import RunGroup
from autoresearch.loop.workers import placed

GIB = 1 << 30


def test_the_setting_is_an_amount_of_memory_or_0_for_none() -> None:
    assert memory.run_memory({memory.MEMORY_ENV: "24G"}) == 24 * GIB
    assert memory.run_memory({memory.MEMORY_ENV: " 512m "}) == 512 << 20
    assert memory.run_memory({memory.MEMORY_ENV: "2GiB"}) == 2 * GIB
    assert memory.run_memory({memory.MEMORY_ENV: "1000000"}) == 1_000_000
    assert memory.run_memory({memory.MEMORY_ENV: "0"}) == 0
    assert memory.run_memory({}) == memory.share(1) > 0
    for bad in ("lots", "1.5G", "-1G", "12 parsecs", "２G"):
        with pytest.raises(AutoresearchError, match="takes an amount of memory"):
            memory.run_memory({memory.MEMORY_ENV: bad})
    # A shell agent's turn (a loop run as root): unset, what the runs' shares leave.
    assert memory.agent_memory({memory.AGENT_MEMORY_ENV: "3G"}) == 3 * GIB
    assert memory.agent_memory({}) == memory.reserve() > 0
    assert memory.reserve(100 * GIB) == 10 * GIB and memory.reserve(8 * GIB) == 2 * GIB
    with pytest.raises(AutoresearchError, match="AUTORESEARCH_AGENT_MEMORY takes an amount of memory"):
        memory.agent_memory({memory.AGENT_MEMORY_ENV: "lots"})


def test_each_worker_gets_an_even_share_of_what_the_reserve_leaves() -> None:
    # A tenth is kept for the loop, its evaluators and the system, at least 2 GiB.
    assert memory.share(1, 100 * GIB) == 90 * GIB
    assert memory.share(4, 100 * GIB) == 90 * GIB // 4
    assert memory.share(1, 8 * GIB) == 6 * GIB
    assert memory.share(8, 8 * GIB) == 2 * GIB  # at least enough for an honest run: more than the machine has
    assert memory.share(2, 0) == 0  # the machine's memory unknown: no limit
    assert 0 < memory.total() <= int(Path("/proc/meminfo").read_text().split()[1]) << 10
    assert memory.shares(2, {}) == {memory.MEMORY_ENV: str(memory.share(2))}
    assert memory.shares(2, {memory.MEMORY_ENV: "3G"}) == {}  # yours, for every run


def test_several_workers_each_run_with_its_share() -> None:
    env = {memory.MEMORY_ENV: str(memory.share(2))}
    devices, _ = placed(None, 2, cores=2)
    assert [{k: d.env[k] for k in env} for d in devices] == [env, env]
    assert memory.MEMORY_ENV not in placed(None, None)[0][0].env  # one worker: the evaluator takes share(1) itself


# An evaluator run by hand, which no loop promised a group, makes one below its own cgroup (cgroup v1, as root).
GROUP = RunGroup.make(memory.limits(GIB))
if GROUP is not None:
    GROUP.remove()
RUNS_GROUPS = run_group.limitable({**tasks.limits(64), **memory.limits(GIB)})  # the loop's: v1, or v2 beside its own


@pytest.mark.slow  # over a second: the fast subset stays under a minute
@pytest.mark.skipif("memory" not in RUNS_GROUPS, reason="no run is given a memory group here (root: CI)")
def test_a_runs_group_kills_within_it_past_its_share_and_counts_it() -> None:
    group = RunGroup.make({**tasks.limits(64), **memory.limits(200 << 20)}, beside=True)
    assert group is not None and group.limited == RUNS_GROUPS
    try:
        limit = next(f for f, v1 in group.folders.items() if not v1 or "memory" in str(f))  # v2's one, or v1's
        name = "memory.limit_in_bytes" if group.folders[limit] else "memory.max"
        assert (limit / name).read_text().strip() == str(200 << 20)
        # No swap beyond it, where the kernel accounts swap (v1: memory and swap together; v2: swap alone).
        swap = limit / ("memory.memsw.limit_in_bytes" if group.folders[limit] else "memory.swap.max")
        assert not swap.exists() or swap.read_text().strip() == (str(200 << 20) if group.folders[limit] else "0")
        # Four processes of 100 MB each: neither holds more than the share, together they do.
        hold = textwrap.dedent("""\
            import os, time
            children = []
            for _ in range(4):
                pid = os.fork()
                if pid == 0:
                    held = b"\\x01" * (100 << 20)
                    time.sleep(1)
                    os._exit(0)
                children.append(pid)
            print(sum(os.waitpid(pid, 0)[1] == 9 for pid in children))
        """)
        done = subprocess.run([sys.executable, "-c", hold], capture_output=True, text=True, timeout=60,
                              preexec_fn=group.enter)  # fmt: skip
        # cgroup v2 kills the whole group (memory.oom.group), this process too; v1 its biggest processes.
        if group.folders[limit]:
            assert int(done.stdout) >= 1, done
        else:
            assert done.returncode == -signal.SIGKILL, done
        assert memory.killed(group)
        assert not tasks.refused(group)
    finally:
        group.remove()
    assert not any(folder.exists() for folder in group.folders)


def test_a_killed_evaluators_groups_are_removed_in_every_hierarchy(tmp_path, monkeypatch) -> None:
    folders = [tmp_path / "pids" / f"{run_group.PREFIX}4242", tmp_path / "memory" / f"{run_group.PREFIX}4242"]
    for folder in folders:
        folder.mkdir(parents=True)
    monkeypatch.setattr(
        run_group.cgroups, "own_every_folder", lambda: [("pids", folders[0].parent), ("memory", folders[1].parent)]
    )
    run_group.remove_group_of(4242)
    assert not any(folder.exists() for folder in folders)


def test_a_run_hands_over_at_most_a_quarter_of_its_share_in_weights() -> None:
    # The evaluator holds about three copies of them as it takes them in, outside the run's group.
    assert memory.most_weights({memory.MEMORY_ENV: "640M"}) == 160 << 20
    assert memory.most_weights({memory.MEMORY_ENV: "0"}) == memory.MOST_WEIGHTS
    assert memory.most_weights({memory.MEMORY_ENV: "1T"}) == memory.MOST_WEIGHTS


LEFT = """
import sys
from autoresearch.evaluator import memory
from autoresearch.evaluator.run_group import RunGroup
group = RunGroup.make(memory.limits(1 << 30))
group.enter()
print(*group.folders)
group.leave()
"""


@pytest.mark.skipif(GROUP is None, reason="no memory cgroup can be made below this process's (root: CI)")
def test_an_evaluator_run_by_hand_leaves_its_group_and_removes_it() -> None:
    done = subprocess.run([sys.executable, "-c", LEFT], capture_output=True, text=True, timeout=60, check=True)
    (folder,) = done.stdout.split()
    assert not Path(folder).exists()


@pytest.mark.slow  # over a second: the fast subset stays under a minute
@pytest.mark.skipif(GROUP is None, reason="no memory cgroup can be made below this process's (root: CI)")
def test_an_evaluator_run_by_hand_that_fails_leaves_no_group(tmp_path) -> None:
    (tmp_path / "train.py").write_text("print('not in a workspace')\n")
    evaluator = subprocess.Popen(
        [sys.executable, "-m", "autoresearch.evaluator.referee", "--train-py", str(tmp_path / "train.py")],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _, stderr = evaluator.communicate(timeout=120)
    assert evaluator.returncode == 2 and "no autoresearch.json" in stderr, stderr
    assert [folder for folder in run_group.group_of(evaluator.pid).folders if folder.exists()] == []
