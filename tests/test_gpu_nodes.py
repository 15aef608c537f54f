"""A confined run gets the device nodes of its own GPUs only: resetting CUDA_VISIBLE_DEVICES inside reaches no
other worker's GPU. The driver's table and /dev are faked here; bench/gpu_isolation.py checks real CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import gpu_nodes, sandbox
from autoresearch.evaluator.gpu_nodes import GpusUntold, gpu_models, nvidia_gpus, own_nodes
from autoresearch.loop import workers
from autoresearch.loop.workers import devices

# Bus order differs from minor order on purpose: CUDA's index follows the bus, the node the minor.
GPUS = [("0000:1b:00.0", "GPU-aaaa1111", 1, "NVIDIA H200"), ("0000:9c:00.0", "GPU-bbbb2222", 0, "NVIDIA H200")]


@pytest.fixture
def machine(tmp_path: Path) -> tuple[Path, Path]:
    dev, table = tmp_path / "dev", tmp_path / "gpus"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-caps"):
        (dev / name).touch()
    for bus, uuid, minor, model in GPUS:
        (table / bus).mkdir(parents=True)
        (table / bus / "information").write_text(
            f"Model: \t\t {model}\nIRQ: \t\t 0\nGPU UUID: \t {uuid}\nBus Location: \t {bus}\nDevice Minor: \t {minor}\n"
        )
    return dev, table


def names(paths: list[str]) -> list[str]:
    return sorted(Path(p).name for p in paths)


def test_the_driver_table_is_read_in_bus_order(machine: tuple[Path, Path]) -> None:
    _, table = machine
    assert [(g.bus, g.uuid, g.minor) for g in nvidia_gpus(table)] == [g[:3] for g in GPUS]
    assert nvidia_gpus(table.parent / "missing") == []


def test_one_gpu_gets_its_own_node_and_the_shared_ones(machine: tuple[Path, Path]) -> None:
    dev, table = machine
    nodes = own_nodes({"CUDA_VISIBLE_DEVICES": "1"}, dev, table)
    assert nodes.own_only and nodes.visible == "0"
    assert names(nodes.paths) == ["nvidia-caps", "nvidia-uvm", "nvidia0", "nvidiactl"]  # bus 2nd = minor 0
    first = own_nodes({"CUDA_VISIBLE_DEVICES": "0"}, dev, table)
    assert names(first.paths) == ["nvidia-caps", "nvidia-uvm", "nvidia1", "nvidiactl"]


def test_several_gpus_keep_the_order_asked_for(machine: tuple[Path, Path]) -> None:
    dev, table = machine
    nodes = own_nodes({"CUDA_VISIBLE_DEVICES": "1,0"}, dev, table)
    assert nodes.own_only and nodes.visible == "1,0"
    assert "nvidia0" in names(nodes.paths) and "nvidia1" in names(nodes.paths)


def test_a_uuid_or_its_start_picks_the_gpu(machine: tuple[Path, Path]) -> None:
    dev, table = machine
    nodes = own_nodes({"CUDA_VISIBLE_DEVICES": "GPU-bbbb"}, dev, table)
    assert nodes.own_only and "nvidia0" in names(nodes.paths) and "nvidia1" not in names(nodes.paths)


@pytest.mark.parametrize("visible", ["2", "0,0", "GPU-cccc", "GPU-", "MIG-1234"])
def test_what_cannot_be_mapped_gets_every_node_and_says_so(machine: tuple[Path, Path], visible: str) -> None:
    dev, table = machine
    nodes = own_nodes({"CUDA_VISIBLE_DEVICES": visible}, dev, table)
    assert not nodes.own_only and nodes.visible is None
    assert names(nodes.paths) == ["nvidia-caps", "nvidia-uvm", "nvidia0", "nvidia1", "nvidiactl"]


def test_an_index_is_not_mapped_where_a_gpu_of_the_table_cannot_be_opened(machine: tuple[Path, Path]) -> None:
    """CUDA numbers the GPUs it can open: in a container holding some of the machine's nodes, or under a device
    cgroup (Slurm), index 0 is not the first bus id, and binding that GPU's node would give the run another
    worker's GPU or none. A UUID still names its GPU."""
    dev, table = machine
    blocked = dev / "nvidia1"  # the first bus id's node: a cgroup refuses it
    can_open = lambda node: node != blocked
    for env in ({"CUDA_VISIBLE_DEVICES": "1"}, {"CUDA_VISIBLE_DEVICES": "0", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}):
        assert not own_nodes(env, dev, table, openable=can_open).own_only
    by_uuid = own_nodes({"CUDA_VISIBLE_DEVICES": "GPU-bbbb2222"}, dev, table, openable=can_open)
    assert by_uuid.own_only and "nvidia0" in names(by_uuid.paths) and "nvidia1" not in names(by_uuid.paths)
    assert not own_nodes({"CUDA_VISIBLE_DEVICES": "GPU-aaaa1111"}, dev, table, openable=can_open).own_only
    blocked.unlink()  # a container with the second GPU's node only
    assert not own_nodes({"CUDA_VISIBLE_DEVICES": "0"}, dev, table).own_only


def test_mixed_models_need_pci_bus_order_to_map_an_index(machine: tuple[Path, Path]) -> None:
    dev, table = machine
    other = table / GPUS[1][0] / "information"
    other.write_text(other.read_text().replace("H200", "H100"))
    assert not own_nodes({"CUDA_VISIBLE_DEVICES": "1"}, dev, table).own_only  # CUDA may order by speed
    assert own_nodes({"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}, dev, table).own_only


def test_gpus_of_two_models_are_refused_before_anything_runs(
    machine: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An RTX 4090 and an RTX 3090 in one workstation: their runs would be judged against each other."""
    dev, table = machine
    monkeypatch.setattr(workers, "gpu_models", lambda ids: gpu_models(ids, dev, table))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert len(devices("all", None, cores=2)) == 2  # two H200s
    other = table / GPUS[1][0] / "information"
    other.write_text(other.read_text().replace("H200", "H100"))
    with pytest.raises(
        AutoresearchError, match=r"--gpus all takes GPUs of different models \(0: NVIDIA H200, 1: NVIDIA H100"
    ) as err:
        devices("all", None, cores=2)
    assert "the GPUs of one model" in err.value.hint
    assert [d.env["CUDA_VISIBLE_DEVICES"] for d in devices("GPU-bbbb2222", None, cores=2)] == ["GPU-bbbb2222"]
    assert gpu_models(["GPU-bbbb", "7"], dev, table) == {"GPU-bbbb": "NVIDIA H100"}  # 7: no such GPU


def test_no_driver_table_or_no_gpu_asked_gets_every_node(machine: tuple[Path, Path]) -> None:
    dev, table = machine
    assert not own_nodes({"CUDA_VISIBLE_DEVICES": "0"}, dev, table.parent / "none").own_only
    assert not own_nodes({}, dev, table).own_only


def test_the_sandbox_binds_only_the_workers_gpu_and_renumbers_it(
    machine: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dev, table = machine
    monkeypatch.setattr(gpu_nodes, "own_nodes", lambda env: own_nodes(env, dev, table))
    workdir = tmp_path / "box"
    workdir.mkdir()
    argv = sandbox.command(["true"], workdir=workdir, env={"CUDA_VISIBLE_DEVICES": "1", "PATH": "/usr/bin"})
    bound = [argv[i + 1] for i, option in enumerate(argv) if option == "--dev-bind-try"]
    assert str(dev / "nvidia0") in bound and str(dev / "nvidia1") not in bound
    settings = {argv[i + 1]: argv[i + 2] for i, option in enumerate(argv) if option == "--setenv"}
    assert settings["CUDA_VISIBLE_DEVICES"] == "0" and settings["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_gpus_all_takes_the_visible_ids_numbers_or_uuids_each_worker_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaaa1111,GPU-bbbb2222")
    found = devices("all", None, cores=2)
    assert [d.env["CUDA_VISIBLE_DEVICES"] for d in found] == ["GPU-aaaa1111", "GPU-bbbb2222"]
    assert all(d.env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" for d in found)  # index i is nvidia-smi's i
    assert [d.env["CUDA_VISIBLE_DEVICES"] for d in devices("2,0", None, cores=2)] == ["2", "0"]
    for wrong in ("0,0", "gpu0"):
        with pytest.raises(AutoresearchError):
            devices(wrong, None, cores=2)


@pytest.fixture
def commands(machine: tuple[Path, Path], monkeypatch) -> list[list[str]]:
    """The sandbox commands evaluators make from now on, on `machine`'s GPUs; "cuda" allowed on a machine without, the
    experiment started as a new process (pytest is not forked)."""
    from autoresearch.evaluator.confined import FORK_ENV

    dev, table = machine
    for probe in (sandbox.unavailable_reason, sandbox.anchors_reason, sandbox.users_reason, sandbox.own_user_namespace):
        probe()  # the loop's probes, once per process (a test before may have cleared them): not among those recorded
    monkeypatch.setattr(gpu_nodes, "own_nodes", lambda env: own_nodes(env, dev, table))
    made = []
    command = sandbox.command
    monkeypatch.setattr(sandbox, "command", lambda argv, **kwargs: made.append(command(argv, **kwargs)) or made[-1])
    monkeypatch.setenv(FORK_ENV, "0")
    monkeypatch.setattr("autoresearch.device.check_available", lambda: None)
    return made


@pytest.mark.slow  # a real evaluator, its experiment started (and stopped at once): ~3 s
@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="needs bubblewrap")
@pytest.mark.parametrize(("device", "bound"), [("cpu", False), ("cuda", True)])
def test_a_run_on_the_cpu_clock_is_given_no_gpu_node(
    device: str, bound: bool, machine: tuple[Path, Path], commands, tmp_path: Path, tiny_prepared: Path, monkeypatch
) -> None:
    """BROKE, fixed: the sandbox bound the GPUs' nodes whatever the device, and every node where it could not tell
    which GPU was the run's (CUDA_VISIBLE_DEVICES="", as `--workers N` sets for CPU workers). On the CPU clock,
    which counts the CPU time of the experiment's processes and no GPU's work, a train.py could set
    CUDA_VISIBLE_DEVICES back and train on any GPU of the machine for free. Now a run on the CPU gets no node."""
    from loop_support import make_workspace

    from autoresearch.evaluator.referee import Referee
    from autoresearch.orphans import remove_box

    dev, _ = machine
    monkeypatch.setenv("AUTORESEARCH_DEVICE", device)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    referee = Referee(ws.root / "train.py", dict(os.environ))
    referee.experiment.stop()
    remove_box(referee.box)
    assert commands
    for argv in commands:
        nodes = [argv[i + 1] for i, option in enumerate(argv) if option == "--dev-bind-try"]
        assert (str(dev / "nvidia0") in nodes) == bound and ("/dev/dri" in nodes) == bound, nodes


@pytest.mark.slow  # a real evaluator, refused before it starts its experiment: ~2 s
@pytest.mark.skipif(sandbox.unavailable_reason() is not None, reason="needs bubblewrap")
def test_a_run_whose_own_gpus_cannot_be_told_for_a_moment_is_not_given_every_gpu(
    machine: tuple[Path, Path], commands, tmp_path: Path, tiny_prepared: Path, monkeypatch
) -> None:
    """BROKE: each evaluator told its run's GPUs' nodes for itself, and one that could not at that moment (the driver's
    table unread, a GPU's node not opened) bound every GPU's node into the run's sandbox, saying nothing: a train.py
    that set CUDA_VISIBLE_DEVICES again trained on another worker's GPU. Where the loop told them (evaluator/promises.py
    GPUS), an evaluator that cannot now starts no experiment: its error stops the loop."""
    from loop_support import make_workspace

    from autoresearch.evaluator import promises
    from autoresearch.evaluator.referee import Referee

    _, table = machine
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "cuda")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    given = sandbox.can_promise(os.environ)  # the loop, at its start
    assert promises.GPUS in given
    commands.clear()  # its probe's
    monkeypatch.setenv(promises.ENV, promises.said(given))
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    table.rename(tmp_path / "unread")  # the driver's table, for this evaluator alone
    with pytest.raises(GpusUntold, match=r"run's GPUs \(1\)"):
        Referee(ws.root / "train.py", dict(os.environ))
    assert not commands
