"""The cores a run may use: its CPUs, capped by a container's CPU quota, which torch does not look at."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch import cores, device
from autoresearch.loop.workers import devices


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def test_a_cgroup_v2_quota_anywhere_above_the_process_caps_it(tmp_path: Path) -> None:
    # A systemd slice limited to 4 cores, holding a service with no limit of its own.
    write(tmp_path / "cpu.max", "max 100000")
    write(tmp_path / "slice" / "cpu.max", "400000 100000")
    write(tmp_path / "slice" / "service" / "cpu.max", "max 100000")
    assert cores.quota_cores(tmp_path, "0::/slice/service\n") == 4
    write(tmp_path / "slice" / "service" / "cpu.max", "150000 100000")  # 1.5 cores: two threads use all of it
    assert cores.quota_cores(tmp_path, "0::/slice/service\n") == 2


def test_a_cgroup_v1_quota_is_read_from_the_cpu_controllers_hierarchy(tmp_path: Path) -> None:
    hierarchy = tmp_path / "cpu,cpuacct"
    write(hierarchy / "cpu.cfs_quota_us", "-1")
    write(hierarchy / "cpu.cfs_period_us", "100000")
    write(hierarchy / "docker" / "abc" / "cpu.cfs_quota_us", "200000")
    write(hierarchy / "docker" / "abc" / "cpu.cfs_period_us", "100000")
    membership = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n"
    assert cores.quota_cores(tmp_path, membership) == 2


def test_inside_a_container_the_mount_point_is_its_own_cgroup(tmp_path: Path) -> None:
    # Without a cgroup namespace the path names the container from the host's root, but the hierarchy mounted
    # in the container starts at the container's cgroup: the limit is at the mount point.
    write(tmp_path / "cpu.max", "300000 100000")
    assert cores.quota_cores(tmp_path, "0::/system.slice/docker-abc.scope\n") == 3


@pytest.mark.parametrize(
    "membership, files",
    [
        ("0::/\n", {"cpu.max": "max 100000"}),  # no limit
        ("0::/\n", {}),  # no cpu controller enabled there
        ("0::/\n", {"cpu.max": "garbage"}),
        ("3:cpu:/\n", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}),
        ("2:memory:/a\n", {"memory/a/cpu.cfs_quota_us": "100000"}),  # not the cpu controller's
        ("", {}),  # not Linux, or no cgroups
    ],
)
def test_no_quota_is_none(tmp_path: Path, membership: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        write(tmp_path / name, text)
    assert cores.quota_cores(tmp_path, membership) is None


def test_the_usable_cores_are_the_cpus_the_process_may_run_on() -> None:
    # Pinned to one CPU (taskset, a Slurm job's cpuset): one core, whatever the machine has.
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
        "from autoresearch import cores; print(cores.usable_cores())"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "1\n"


def test_a_run_on_the_cpu_takes_no_more_threads_than_the_quota_allows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "usable_cores", lambda: 1)
    assert device.cpu_threads() == 1  # torch alone would start a thread per core of the machine
    monkeypatch.setattr(device, "usable_cores", lambda: 4096)
    assert device.cpu_threads() == device.torch.get_num_threads()  # and never more than it would


def test_workers_on_the_cpu_share_the_usable_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("autoresearch.loop.workers.usable_cores", lambda: 4)
    assert [d.env["OMP_NUM_THREADS"] for d in devices(None, 2)] == ["2", "2"]
