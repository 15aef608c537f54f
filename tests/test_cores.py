"""The cores a run may use: its CPUs, and a container's CPU quota, which torch does not look at."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from autoresearch.device import cpu_name
from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import cores, memory, referee, tasks
from autoresearch.evaluator.clock import CpuClock, describe
from autoresearch.loop import ray_executor
from autoresearch.loop.executor import SETUP_FAILED, setup_error
from autoresearch.loop.workers import LOCAL, Device, devices, placed


def write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else (text + "\n").encode())


def v2_mount(point: Path, root: str = "/") -> str:
    """A mountinfo line for cgroup v2 mounted at `point`, showing the hierarchy from `root`."""
    return f"30 23 0:26 {root} {point} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def v1_mount(point: Path, root: str = "/", options: str = "rw,cpu,cpuacct") -> str:
    return f"32 31 0:29 {root} {point} rw,relatime - cgroup cgroup {options}\n"


def test_a_cgroup_v2_quota_anywhere_above_the_process_caps_it(tmp_path: Path) -> None:
    # A systemd slice limited to 4 cores, holding a service with no limit of its own.
    write(tmp_path / "cpu.max", "max 100000")
    write(tmp_path / "slice" / "cpu.max", "400000 100000")
    write(tmp_path / "slice" / "service" / "cpu.max", "max 100000")
    assert cores.quota_of("0::/slice/service\n", v2_mount(tmp_path)) == 4
    write(tmp_path / "slice" / "service" / "cpu.max", "150000 100000")
    assert cores.quota_of("0::/slice/service\n", v2_mount(tmp_path)) == 1.5


def test_a_cgroup_v1_quota_is_read_where_the_cpu_controller_is_mounted(tmp_path: Path) -> None:
    hierarchy = tmp_path / "cpu,cpuacct"
    write(hierarchy / "cpu.cfs_quota_us", "-1")
    write(hierarchy / "cpu.cfs_period_us", "100000")
    write(hierarchy / "docker" / "abc" / "cpu.cfs_quota_us", "200000")
    write(hierarchy / "docker" / "abc" / "cpu.cfs_period_us", "100000")
    memory = f"33 31 0:30 / {tmp_path / 'memory'} rw - cgroup cgroup rw,memory\n"
    for controllers in ("cpu,cpuacct", "cpuacct,cpu"):  # old kernels print the pair the other way round
        membership = f"12:memory:/docker/abc\n4:{controllers}:/docker/abc\n1:name=systemd:/docker/abc\n"
        assert cores.quota_of(membership, memory + v1_mount(hierarchy)) == 2


def test_inside_a_container_the_mount_shows_its_own_cgroup(tmp_path: Path) -> None:
    # Without a cgroup namespace the path names the container from the host's root; the mount's root says which
    # part of the hierarchy it shows. A child cgroup that a Docker inside made is no ancestor, and is not read.
    scope = "/system.slice/docker-abc.scope"
    write(tmp_path / "cpu.max", "300000 100000")
    write(tmp_path / "system.slice" / "cpu.max", "100000 100000")
    assert cores.quota_of(f"0::{scope}\n", v2_mount(tmp_path, root=scope)) == 3
    v1 = tmp_path / "v1"
    write(v1 / "cpu.cfs_quota_us", "-1")
    write(v1 / "cpu.cfs_period_us", "100000")
    write(v1 / "docker" / "cpu.cfs_quota_us", "100000")  # the inner Docker's, beside this process
    write(v1 / "docker" / "cpu.cfs_period_us", "100000")
    assert cores.quota_of("4:cpu,cpuacct:/docker/abc\n", v1_mount(v1, root="/docker/abc")) is None


def test_a_path_outside_the_mounted_part_is_not_guessed_at(tmp_path: Path) -> None:
    write(tmp_path / "cpu.max", "100000 100000")
    assert cores.quota_of("0::/../user.slice\n", v2_mount(tmp_path)) is None
    assert cores.quota_of("0::/other\n", v2_mount(tmp_path, root="/mine")) is None


def test_a_mount_point_with_a_space_is_found(tmp_path: Path) -> None:
    point = tmp_path / "cgroup fs"
    write(point / "cpu.max", "200000 100000")
    assert cores.quota_of("0::/\n", v2_mount(tmp_path / "cgroup\\040fs")) == 2


@pytest.mark.parametrize(
    "text",
    [
        "max 100000",  # no limit
        "garbage",
        "1 2 3",
        "100000 0",
        "-1 -1",
        "0 100000",
        "1e400 1",
        "9" * 5000 + " 1",
        b"\xff\xfe 100000",
    ],
)
def test_no_quota_is_none_and_nothing_raises(tmp_path: Path, text: str | bytes) -> None:
    write(tmp_path / "cpu.max", text)
    assert cores.quota_of("0::/\n", v2_mount(tmp_path)) is None


@pytest.mark.parametrize(
    "membership, mountinfo",
    [
        ("", ""),  # not Linux, or no cgroups
        ("0::/\n", ""),  # nothing mounted
        ("2:memory:/a\n", "x - cgroup cgroup rw,memory\n"),  # not the cpu controller's
        ("nonsense\n0:\n", "also nonsense - \n"),
        ("0::/a\x00b\n", "30 23 0:26 / /nonexistent/cgroup rw - cgroup2 cgroup2 rw\n"),
    ],
)
def test_odd_cgroup_tables_give_no_quota(membership: str, mountinfo: str) -> None:
    assert cores.quota_of(membership, mountinfo) is None


def test_the_usable_cores_are_the_cpus_the_process_may_run_on() -> None:
    # Pinned to one CPU (taskset, a Slurm job's cpuset): one core, whatever the machine has.
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from autoresearch.evaluator import cores; print(cores.usable_cores())"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "1\n"


def test_a_run_takes_no_more_threads_than_the_quota_and_its_clock_counts_the_quota(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(cores, "quota", lambda: 4.0)
    assert cores.run_cores(64) == (4, 4.0)  # torch alone would start 64 threads on 4 cores' time
    assert cores.run_cores(2) == (2, 2.0)  # and never more than it would (OMP_NUM_THREADS=2)
    monkeypatch.setattr(cores, "quota", lambda: 0.5)  # Kubernetes' `limits.cpu: 500m`
    threads, counted = cores.run_cores(64)
    assert (threads, counted) == (1, 0.5)  # a budget second is half a CPU second: about one wall second
    assert describe(CpuClock(counted)) == "CPU time / 0.5 cores"
    monkeypatch.setattr(cores, "quota", lambda: None)
    assert cores.run_cores(64) == (64, 64.0)


def test_a_failure_to_read_the_quota_never_fails_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(membership: str, mountinfo: str) -> float:
        raise RuntimeError("an unforeseen cgroup table")

    monkeypatch.setattr(cores, "quota_of", broken)
    assert cores.quota() is None
    assert cores.usable_cores() >= 1


def test_workers_on_the_cpu_share_the_usable_cores_one_each_at_least(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("autoresearch.loop.workers.usable_cores", lambda: 4)
    assert [d.env["OMP_NUM_THREADS"] for d in devices(None, 2)] == ["2", "2"]
    with pytest.raises(AutoresearchError, match="--workers 5 needs a core per worker") as refused:
        devices(None, 5)
    assert "--workers 4 or fewer" in refused.value.hint
    monkeypatch.setattr("autoresearch.loop.workers.usable_cores", lambda: 1)
    with pytest.raises(AutoresearchError, match="--workers 2 needs a core per worker") as refused:
        devices(None, 2)  # BROKE, fixed: the hint said "use --workers 1 or fewer"
    assert "leave --workers out" in refused.value.hint and "or fewer" not in refused.value.hint


def test_the_cpus_name_comes_from_the_kernel_and_else_is_its_architecture(tmp_path):
    """Part of what a score is compared by (a result's `setup`): a laptop's CPU and a server's are not one."""
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n")
    assert cpu_name(x86) == "AMD EPYC 7B13"
    arm = tmp_path / "arm"  # ARM kernels name no model: the core's designer and part tell a Graviton2 from a 3
    arm.write_text("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xd40\n\nprocessor\t: 1\nCPU part\t: 0xd0c\n")
    assert cpu_name(arm) == f"CPU ({platform.machine()}, implementer 0x41, part 0xd40)"
    assert cpu_name(tmp_path / "absent") == f"CPU ({platform.machine()})"  # no /proc (macOS asks sysctl)


# -- each worker's own CPUs ------------------------------------------------------------------------------------


def smt_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int = 16) -> None:
    """A machine of `count` cores with 2 hyperthreads each (core i is CPUs i and i + count)."""
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: set(range(2 * count)), raising=False)
    for cpu in range(2 * count):
        write(tmp_path / f"cpu{cpu}" / "topology" / "thread_siblings_list", f"{cpu % count},{cpu % count + count}")
    monkeypatch.setattr(cores, "TOPOLOGY", tmp_path)


def test_each_worker_gets_whole_cores_of_its_own_and_too_few_cpus_pin_none(tmp_path, monkeypatch) -> None:
    """A core's hyperthreads share its units: split by number, every worker would get half of every core."""
    smt_machine(tmp_path, monkeypatch, count=4)  # core 0 is CPUs 0 and 4
    assert cores.shares(2) == [(0, 1, 4, 5), (2, 3, 6, 7)]
    assert cores.shares(3) == [(0, 1, 4, 5), (2, 6), (3, 7)]
    assert cores.shares(8) == [(cpu,) for cpu in range(8)]  # more workers than cores: a hyperthread each
    assert cores.shares(9) is None
    pins = [d.env.get(cores.RUN_CPUS_ENV) for d in devices(None, 2, cores=8)]
    assert pins == ["0,1,4,5", "2,3,6,7"]
    assert cores.RUN_CPUS_ENV not in devices(None, 1, cores=8)[0].env  # one worker: every CPU, as ever


def test_the_runs_on_each_gpu_of_a_ray_node_get_its_share_of_that_nodes_cpus_and_memory(tmp_path, monkeypatch) -> None:
    smt_machine(tmp_path, monkeypatch, count=4)  # core 0 is CPUs 0 and 4
    monkeypatch.delenv(memory.MEMORY_ENV, raising=False)
    nodes = [{"NodeID": "other", "Resources": {"GPU": 8.0}}, {"NodeID": "this", "Resources": {"GPU": 2.0}}]
    context = SimpleNamespace(get_node_id=lambda: "this")
    ray = SimpleNamespace(get_runtime_context=lambda: context, nodes=lambda: nodes)
    monkeypatch.setattr(ray_executor, "ray_module", lambda: ray)
    half = {memory.MEMORY_ENV: str(memory.share(2))}
    assert [ray_executor._share_of(gpu) for gpu in ("0", "1")] == [
        {cores.RUN_CPUS_ENV: "0,1,4,5", **half},
        {cores.RUN_CPUS_ENV: "2,3,6,7", **half},
    ]
    nodes[1]["Resources"]["GPU"] = 1.0  # a node of one GPU: its runs keep every CPU, and all but the reserve
    assert ray_executor._share_of("0") == {memory.MEMORY_ENV: str(memory.share(1))}
    # The node's Ray started by a user whose `ulimit -u` is RHEL's 4096, 96 tasks of it in use: a share of the rest.
    monkeypatch.delenv(tasks.TASKS_ENV, raising=False)
    monkeypatch.setattr(tasks, "by_limit", lambda own_user=False: True)
    monkeypatch.setattr(tasks, "user_limit", lambda: 4096)
    monkeypatch.setattr(tasks, "user_tasks", lambda uid: 96)
    assert ray_executor._share_of("0")[tasks.TASKS_ENV] == str(4000 // 3)


PINNED = """
import os, subprocess, sys, threading, time
from autoresearch.evaluator import cores
early = threading.Thread(target=time.sleep, args=(1,))
early.start()  # a thread started before the pin (torch's, imported first) is pinned too
cores.pin()
print(sorted(os.sched_getaffinity(0)), sorted(os.sched_getaffinity(early.native_id)))
subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"])
"""


@pytest.mark.slow  # over a second: the fast subset stays under a minute
@pytest.mark.skipif(len(getattr(os, "sched_getaffinity", lambda pid: ())(0)) < 2, reason="needs 2 CPUs")
def test_an_evaluator_pins_itself_its_threads_and_what_it_starts() -> None:
    last = max(os.sched_getaffinity(0))
    env = {**os.environ, cores.RUN_CPUS_ENV: str(last)}
    out = subprocess.run([sys.executable, "-c", PINNED], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.splitlines() == [f"[{last}] [{last}]", f"[{last}]"], out.stderr


def test_a_cpu_list_set_wrongly_by_hand_is_an_error_not_a_run_on_every_cpu() -> None:
    """BROKE, fixed: a list that did not parse pinned nothing, without a word, and the run took the other workers'
    CPUs too."""
    before = os.sched_getaffinity(0)
    for wrong in ("not-a-list", "1-x", "3,x"):
        with pytest.raises(AutoresearchError, match="takes a CPU list") as raised:
            cores.pin({cores.RUN_CPUS_ENV: wrong})
        assert f"unset {cores.RUN_CPUS_ENV}" in raised.value.hint
    cores.pin({cores.RUN_CPUS_ENV: " "})  # blank is unset: nothing pinned
    assert os.sched_getaffinity(0) == before


def test_an_evaluator_that_cannot_have_its_workers_cpus_stops_the_loop_not_trains_unpinned(
    monkeypatch: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed: a CPU gone offline (or out of the loop's cpuset) since the loop split them left the evaluator
    unpinned without a word, and its run trained on every core, beside the other workers' runs. Now it stops as an
    evaluator that cannot set up does: the loop stops and says why, the experiment trained on its next start."""
    unheld = str(max(os.sched_getaffinity(0)) + 4096)  # no CPU of this machine
    before = os.sched_getaffinity(0)
    with pytest.raises(AutoresearchError, match=r"the CPUs \d+ of this worker's runs .* cannot be had now"):
        cores.pin({cores.RUN_CPUS_ENV: unheld})
    monkeypatch.setenv(cores.RUN_CPUS_ENV, unheld)
    assert referee.main(["--train-py", str(tmp_path / "train.py")]) == SETUP_FAILED
    error, hint = setup_error(capsys.readouterr().err)
    assert "cannot be had now" in error and "start the loop again" in hint
    assert os.sched_getaffinity(0) == before


def test_a_shell_agents_turns_get_a_whole_core_per_worker_where_runs_train_on_gpus(tmp_path, monkeypatch) -> None:
    """A coding agent's turn runs beside the runs, one worker's too: one that kept every core busy would slow the
    baseline's seeds as a neighbour's train.py did. Where the runs train on GPUs, the last whole core per worker is
    the agents', as long as each run keeps RUN_CORES; the runs split the rest, one worker's run pinned too."""
    monkeypatch.delenv(cores.AGENT_CORES_ENV, raising=False)
    smt_machine(tmp_path, monkeypatch)
    assert [cores.agent_cores(n, on_gpu=True) for n in (1, 2, 3, 4)] == [1, 2, 3, 0]  # 16 - 4 < 4 x RUN_CORES
    assert cores.agent_cores(1, on_gpu=False) == 0  # a run on the CPU would lose its share of the compute
    runs, theirs = cores.pins(1, 1)
    assert theirs == {cores.AGENT_CPUS_ENV: "15,31"}  # a core and its hyperthread
    assert runs == [{cores.RUN_CPUS_ENV: ",".join(map(str, [*range(15), *range(16, 31)]))}]
    runs, theirs = cores.pins(2, 2)
    assert theirs == {cores.AGENT_CPUS_ENV: "14,15,30,31"}
    assert runs == [{cores.RUN_CPUS_ENV: "0,1,2,3,4,5,6,16,17,18,19,20,21,22"},
                    {cores.RUN_CPUS_ENV: "7,8,9,10,11,12,13,23,24,25,26,27,28,29"}]  # fmt: skip
    halves = [[*range(8), *range(16, 24)], [*range(8, 16), *range(24, 32)]]  # no agent: every core the runs'
    assert cores.pins(2) == ([{cores.RUN_CPUS_ENV: ",".join(map(str, cpus))} for cpus in halves], {})
    with pytest.raises(ValueError, match="16 of 16 cores for the agents leave fewer than one for each of 1 runs"):
        cores.pins(1, 16)


def test_agent_cores_can_be_set_and_a_bad_setting_is_refused_before_anything_runs(tmp_path, monkeypatch) -> None:
    smt_machine(tmp_path, monkeypatch, count=2)
    monkeypatch.setattr("autoresearch.loop.workers.runs_train_on_cpu", lambda env: False)
    monkeypatch.delenv(cores.AGENT_CORES_ENV, raising=False)
    found, theirs = placed(None, None, agents=True)  # 2 cores: too few to set one aside by default
    assert found == [Device(LOCAL)] and theirs == {}
    monkeypatch.setenv(cores.AGENT_CORES_ENV, "1")  # asked for: on a laptop's GPU, or on the CPU
    found, theirs = placed(None, None, agents=True)
    assert found == [Device(LOCAL, {cores.RUN_CPUS_ENV: "0,2"})] and theirs == {cores.AGENT_CPUS_ENV: "1,3"}
    assert placed(None, None, agents=False) == ([Device(LOCAL)], {})  # no shell: nothing set aside
    found, theirs = placed(None, 1, agents=True)
    assert found[0].env[cores.RUN_CPUS_ENV] == "0,2" and theirs == {cores.AGENT_CPUS_ENV: "1,3"}
    monkeypatch.setenv(cores.AGENT_CORES_ENV, "0")
    smt_machine(tmp_path, monkeypatch)
    assert placed(None, None, agents=True) == ([Device(LOCAL)], {})
    for value, said in (("2", "leave fewer than one for each of 2 runs"), ("two", "'two' is not a number of cores")):
        monkeypatch.setenv(cores.AGENT_CORES_ENV, value)
        smt_machine(tmp_path, monkeypatch, count=2)
        with pytest.raises(AutoresearchError, match=said) as refused:
            placed(None, 2, agents=True)
        assert cores.AGENT_CORES_ENV in refused.value.hint and "number of whole cores" in refused.value.hint
