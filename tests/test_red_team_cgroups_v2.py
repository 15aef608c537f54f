"""Red team: the runs' cgroups made beside the loop's own on cgroup v2 (evaluator/run_group.py `home_on_v2`).

There a run's groups lie in the loop's parent cgroup, which other tenants share (a machine's other containers, a
systemd slice's other services): what they name there is read by every evaluator's sweep. And what the loop's own
cgroup limits (a container's memory, CPU quota, cpuset) no longer holds what is moved out of it. A folder tree stands
for the kernel's, as in tests/test_tasks.py (this machine has cgroup v1).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_tasks import v2_machine

from autoresearch.agents import turn_cgroups
from autoresearch.evaluator import cgroups, memory, promises, run_group
from autoresearch.evaluator.run_group import RunGroup


@pytest.mark.parametrize("pid", ["\u00b2", "9" * 30])  # str.isdigit says yes to both; int() or os.kill says no
def test_a_tenants_group_beside_the_loops_named_with_no_pid_crashes_no_evaluator_and_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pid: str
) -> None:
    """A tenant of the loop's parent cgroup (another container, another service of the slice) made a group there
    named as the loop's evaluators name theirs, with a "pid" that `isdigit` takes and int() (a superscript two) or
    os.kill (past a C int) does not. Every evaluator's sweep raised ValueError or OverflowError, not OSError, out of
    RunGroup.make: each evaluator ended with 1 (a traceback), recorded as its experiment's crash, run after run; the
    loop's probe raised at its start. The group is no evaluator's of ours: left alone, and the evaluator's made."""
    top, _ = v2_machine(tmp_path, monkeypatch)
    machine = top / "process_api"
    theirs = machine / f"{run_group.PREFIX}{pid}-808e"
    theirs.mkdir()
    monkeypatch.setenv(promises.ENV, "memory,pids")
    group = RunGroup.make(memory.limits(1 << 30), holds=frozenset({"pids", "memory"}))  # as referee.py makes it
    assert group is not None and group.limited == {"memory"}
    assert theirs.is_dir()
    (machine / f"autoresearch-agents-{pid}-all").mkdir()  # turn_cgroups' sweep reads its names the same way
    cgroups.sweep(machine, turn_cgroups.outer_pattern())
    assert (machine / f"autoresearch-agents-{pid}-all").is_dir()


def test_a_sweep_of_the_loops_own_cgroup_leaves_the_groups_another_loop_made_beside_its_own(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A group made below the sweeping process's own cgroup is named PREFIX + pid, nothing after it (v1; v2 where the
    own hands the controllers down: the root cgroup). A loop in a child cgroup `foo` of it makes its runs' groups
    beside its own, there, named PREFIX + pid + "-foo", by pids of its own PID namespace (a container's), which the
    sweeping process does not see: the sweep took them for its own dead evaluators' and removed them, empty, between
    their `mkdir` and the moment their evaluator or run entered them (that evaluator stops its loop, that run
    crashes)."""
    (tmp_path / "cgroup.subtree_control").write_text("memory pids\n")  # v2's root: it hands down, holding us
    monkeypatch.setattr(run_group.cgroups, "own_folders", lambda controller: [(tmp_path, tmp_path)])
    (tmp_path / "foo").mkdir()  # the other loop's cgroup, which it is in
    theirs = tmp_path / f"{run_group.PREFIX}99999999-foo"
    (theirs / run_group.LEAF).mkdir(parents=True)
    ours = tmp_path / f"{run_group.PREFIX}99999999"  # a dead evaluator's of ours: swept
    ours.mkdir()
    group = RunGroup.make(memory.limits(1 << 30), beside=False)
    assert group is not None and group.folders == {tmp_path / f"{run_group.PREFIX}{os.getpid()}": False}
    assert not ours.exists()
    assert (theirs / run_group.LEAF).is_dir()


@pytest.mark.parametrize(
    ("name", "limited", "unlimited"),
    [
        ("memory.max", str(8 << 30), "max"),
        ("cpu.max", "200000 100000", "max 100000"),
        ("cpuset.cpus", "0-3", ""),
        # Not read as limits before (note 65): swap, compressed swap, huge pages, RDMA, misc (AMD SEV's ASIDs)
        ("memory.swap.high", str(1 << 30), "max"),
        ("memory.zswap.max", "0", "max"),
        ("hugetlb.2MB.max", str(1 << 30), "max"),
        ("hugetlb.1GB.rsvd.max", "0", "max"),
        ("rdma.max", "mlx5_0 hca_handle=2 hca_object=max", "mlx5_0 hca_handle=max hca_object=max"),
        ("misc.max", "sev max\nsev_es 4", "sev max\nsev_es max"),
    ],
)
def test_a_loop_whose_own_cgroup_is_limited_moves_no_run_out_of_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, limited: str, unlimited: str
) -> None:
    """A container's cgroup (the lent machines' /process_api/<id> has the memory controller) limits all the container
    runs: its memory, its CPU quota, its cpuset. A group made beside it, below its parent, is out of those limits:
    the runs there held the loop's share each, on top of what the container may hold (the loop and its agents' turns,
    up to the container's whole limit), and used CPUs past its quota and cpuset, at the expense of the machine's other
    tenants, who were given what the container was not. Where the loop's own cgroup carries a limit of its own, no
    group is made beside it, and so none is promised (the loop's probe makes its group as an evaluator does); where
    each file says "no limit" in its own way, the groups are made beside it."""
    top, _ = v2_machine(tmp_path, monkeypatch)
    loop = top / "process_api" / "808e"
    (loop / "memory.max").write_text("max\n")  # as v2 shows what is not limited
    (loop / "cpu.max").write_text("max 100000\n")
    (loop / "cpuset.cpus").write_text("\n")
    (loop / name).write_text(limited + "\n")
    monkeypatch.setenv(promises.ENV, "memory,pids")
    assert RunGroup.make(memory.limits(1 << 30), holds=frozenset({"pids", "memory"})) is None
    assert not list((top / "process_api").glob(f"{run_group.PREFIX}*"))
    (loop / name).write_text(unlimited + "\n")
    assert RunGroup.make(memory.limits(1 << 30), holds=frozenset({"pids", "memory"})) is not None  # unlimited: beside


@pytest.mark.skipif(not cgroups.own_every_folder(), reason="no cgroup hierarchy mounted here")
def test_the_loop_names_no_group_outside_the_cgroup_mounts_it_reads() -> None:
    """`group_of` names the group an evaluator made beside the loop's cgroup below that cgroup's parent, and
    `home_on_v2` reads the parent's cgroup.subtree_control, in every v2 hierarchy: also where the loop's cgroup is the
    top of its mount (a container's, or a hybrid machine's /sys/fs/cgroup/unified at "0::/", as here), whose parent
    is no cgroup at all (here /sys/fs/cgroup, a tmpfs), whatever lies there: the loop, as root, removed what it found
    there (following a link at its name, the empty folders below it) and read its counts and "controllers" from it."""
    mounts = {os.stat(own).st_dev for _, own in cgroups.own_every_folder()}
    for folder in run_group.group_of(os.getpid()).folders:
        assert os.stat(folder.parent).st_dev in mounts, folder


def test_a_turns_outer_group_its_loops_parent_cannot_take_is_made_below_the_loops_cgroup_as_before(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A loop run as root starts each shell agent's turn in a locked group of its own inside an outer one, on cgroup
    v2 now beside the loop's own cgroup, in its parent (agents/turn_cgroups.py). Where the parent could not take the
    outer (its name, the agents' CPUs then the loop's cgroup's, past the 255 bytes a cgroup's name may have: 50 CPUs
    set aside for the agents beside the lent machines' /process_api/<32 hex digits>; a parent the loop may not write,
    root of a user namespace given its own cgroup), the turn got no group at all there, where it had one below the
    loop's cgroup before: it started in the loop's own cgroup, the root of the cgroup namespace it may make, whose
    cgroup.freeze and cgroup.kill are its to write where cgroup2 is mounted without nsdelegate (this machine's
    /sys/fs/cgroup/unified: a sleep in such a cgroup, standing for the loop, was frozen so). The outer is made below
    the loop's cgroup there, as it was."""
    top, own = v2_machine(tmp_path, monkeypatch)
    loop = top / "process_api" / "a34ce3c65c83e7178369efe5939b2789"
    loop.mkdir()
    (loop / "cgroup.subtree_control").write_text("\n")
    own[0] = (loop, top)
    monkeypatch.setattr(turn_cgroups.atexit, "register", lambda *args: None)  # no removal of a fake tree at exit
    cpus = ",".join(map(str, range(100, 150)))
    beside = f"{turn_cgroups.PREFIX}{os.getpid()}-{cpus.replace(',', '_')}-{loop.name}"
    assert len(beside) > 255 >= len(beside) - len(loop.name) - 1  # too long beside the loop's, not below it
    (outer,) = turn_cgroups.turn_groups.__wrapped__(cpus)
    assert outer == loop / f"{turn_cgroups.PREFIX}{os.getpid()}-{cpus.replace(',', '_')}"


def test_the_groups_a_killed_loop_left_beside_its_cgroup_are_swept_once_that_cgroup_is_gone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A loop killed outright (SIGKILL, a machine's time limit: no atexit runs) leaves its turns' outer group beside its
    cgroup, and its evaluators theirs, named after that cgroup. A sweep took only the groups named after the sweeping
    loop's own cgroup (another loop's there are by pids of another PID namespace), and where each loop is given a
    cgroup of its own (a session's scope, a container's, the lent machines' /process_api/<id> for each command) the
    killed one's is gone with it: its groups were left in the shared parent for good, no later loop's to sweep, each
    holding one of the machine's 65,535 memory-group ids. Those made beside a cgroup that is gone are swept now,
    whatever their pid (none of their makers is left in it); those beside a cgroup still there stay."""
    top, _ = v2_machine(tmp_path, monkeypatch)
    machine = top / "process_api"
    (machine / "4f1c").mkdir()  # another loop's cgroup, which it is in
    gone = [machine / f"{run_group.PREFIX}1-9d2a", machine / f"{turn_cgroups.PREFIX}1-all-9d2a"]  # 9d2a: gone
    kept = [machine / f"{run_group.PREFIX}1-4f1c", machine / f"{turn_cgroups.PREFIX}1-all-4f1c"]
    for folder in (*gone, *kept):
        folder.mkdir()
    (gone[0] / run_group.LEAF).mkdir()
    monkeypatch.setenv(promises.ENV, "memory,pids")
    monkeypatch.setattr(turn_cgroups.atexit, "register", lambda *args: None)  # no removal of a fake tree at exit
    assert RunGroup.make(memory.limits(1 << 30), holds=frozenset({"pids", "memory"})) is not None
    assert turn_cgroups.turn_groups.__wrapped__("")
    assert not any(folder.exists() for folder in gone)
    assert all(folder.is_dir() for folder in kept)


def test_a_loop_whose_own_cgroup_keeps_to_some_memory_nodes_moves_no_run_nor_turn_out_of_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A cgroup's cpuset.mems keeps what it holds to its memory nodes (a container given the NUMA node of its GPUs:
    docker's --cpuset-mems, systemd's AllowedMemoryNodes=), as its cpuset.cpus keeps it to its CPUs. It was not read as
    a limit of the loop's own cgroup (run_group._limited): the runs' groups, and now the agents' turns' outer group,
    were made beside it, their memory taken from every node, the other tenants' too. Neither is now."""
    top, _ = v2_machine(tmp_path, monkeypatch)
    loop = top / "process_api" / "808e"
    (loop / "cpuset.mems").write_text("0\n")
    monkeypatch.setenv(promises.ENV, "memory,pids")
    monkeypatch.setattr(turn_cgroups.atexit, "register", lambda *args: None)  # no removal of a fake tree at exit
    assert RunGroup.make(memory.limits(1 << 30), holds=frozenset({"pids", "memory"})) is None
    (outer,) = turn_cgroups.turn_groups.__wrapped__("")
    assert outer.parent == loop
