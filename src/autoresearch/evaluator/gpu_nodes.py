"""Which NVIDIA device nodes a confined run gets: those of its own GPUs, not every GPU of the machine.

CUDA_VISIBLE_DEVICES is only a request that the CUDA library honours; a train.py that resets it before CUDA
starts would see every GPU, and could train on (or fill the memory of) another worker's. A GPU whose device
node (/dev/nvidiaN) is absent cannot be opened at all, so the sandbox binds the nodes of the GPUs the worker
was given and none other, and inside the sandbox those are all there is.

The driver lists its GPUs under /proc/driver/nvidia/gpus/<PCI bus id>/information, each with its UUID and
device minor (the N of /dev/nvidiaN). CUDA numbers GPUs in PCI bus order when CUDA_DEVICE_ORDER=PCI_BUS_ID
(the workers set it) or where every GPU is the same model; the index i of CUDA_VISIBLE_DEVICES is then the i-th
bus id, but only where this process can open every GPU the driver lists: CUDA numbers the GPUs it can open,
so in a container that has some of the machine's nodes, or under a job scheduler's device cgroup (Slurm), the
index is not the bus order's. Where the mapping cannot be told (no driver table, an unknown id, a GPU of the
table this process cannot open, mixed models without PCI_BUS_ID) the run gets every node, as any CUDA program
would, and `own_nodes` says so; where the loop could tell them at its start, an evaluator that cannot now stops the loop
instead (`run_nodes`). A UUID names its GPU wherever it is.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from autoresearch.errors import AutoresearchError
from autoresearch.evaluator import promises

DRIVER_TABLE = Path("/proc/driver/nvidia/gpus")
_PER_GPU = re.compile(r"nvidia\d+$")


@dataclass(frozen=True)
class Gpu:
    bus: str  # "0000:1b:00.0"
    uuid: str  # "GPU-3f1c..."
    minor: int  # its node is /dev/nvidia<minor>
    model: str


def nvidia_gpus(table: Path = DRIVER_TABLE) -> list[Gpu]:
    """The driver's GPUs in PCI bus order; [] where there is no driver (or no table)."""
    gpus = []
    for info in sorted(table.glob("*/information")):
        try:
            fields = dict(_field(line) for line in info.read_text().splitlines() if ":" in line)
            gpus.append(Gpu(info.parent.name, fields["GPU UUID"], int(fields["Device Minor"]), fields.get("Model", "")))
        except (OSError, KeyError, ValueError):
            return []  # a table we cannot read whole cannot map ids to nodes
    return sorted(gpus, key=lambda gpu: gpu.bus)


def _field(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip(), value.strip()


@dataclass(frozen=True)
class Nodes:
    paths: list[str]  # device nodes to bind
    visible: str | None  # CUDA_VISIBLE_DEVICES inside the sandbox (None: leave it as given)
    own_only: bool  # True: only the given GPUs' nodes


def _openable(node: Path) -> bool:
    """Whether this process can open a GPU's device node (a device cgroup refuses it with EPERM). Opening it
    starts nothing on the GPU."""
    try:
        os.close(os.open(node, os.O_RDWR | os.O_CLOEXEC))
    except OSError:
        return False
    return True


def named(visible: str, gpus: list[Gpu], ordered: bool) -> list[Gpu] | None:
    """The GPUs of the driver's table that CUDA_VISIBLE_DEVICES=`visible` names, in its order; None where one
    cannot be told (an index where CUDA's numbering may not be the bus order, an unknown id, a GPU named twice)."""
    chosen: list[Gpu] = []
    for item in (part.strip() for part in visible.split(",")):
        if item.isdigit() and ordered and int(item) < len(gpus):
            match = [gpus[int(item)]]
        else:  # a UUID, or a unique start of one, as CUDA takes them
            match = [gpu for gpu in gpus if item.startswith("GPU-") and gpu.uuid.startswith(item)]
        if len(match) != 1 or match[0] in chosen:
            return None
        chosen.append(match[0])
    return chosen


def gpu_models(ids: list[str], dev: Path = Path("/dev"), table: Path = DRIVER_TABLE) -> dict[str, str]:
    """The model, as the driver names it, of each GPU a worker given CUDA_VISIBLE_DEVICES=<id> (in PCI bus order)
    trains on; ids whose GPU cannot be told are left out."""
    gpus = nvidia_gpus(table)
    ordered = all(_openable(dev / f"nvidia{gpu.minor}") for gpu in gpus)
    models = {item: chosen[0].model for item in ids if (chosen := named(item, gpus, ordered))}
    return {item: model for item, model in models.items() if model}


def own_nodes(
    env: Mapping[str, str],
    dev: Path = Path("/dev"),
    table: Path = DRIVER_TABLE,
    openable: Callable[[Path], bool] = _openable,
) -> Nodes:
    """The nodes for a run whose environment is `env`: the shared ones (nvidiactl, nvidia-uvm, nvidia-caps, ...)
    and those of the GPUs in its CUDA_VISIBLE_DEVICES; every node where that cannot be told."""
    every = sorted(glob.glob(str(dev / "nvidia*")))
    shared = [path for path in every if not _PER_GPU.search(path)]
    whole = Nodes(every, None, False)
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return whole
    gpus = nvidia_gpus(table)
    ordered = env.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID" or len({gpu.model for gpu in gpus}) == 1
    # CUDA's index i is the i-th GPU it can open: the bus order's only where it can open all of them.
    ordered = ordered and all(openable(dev / f"nvidia{gpu.minor}") for gpu in gpus)
    if (chosen := named(visible, gpus, ordered)) is None:
        return whole
    nodes = [dev / f"nvidia{gpu.minor}" for gpu in chosen]
    if not all(openable(node) for node in nodes):
        return whole
    # Inside, CUDA sees only these, in bus order: keep the order CUDA_VISIBLE_DEVICES asked for.
    by_bus = sorted(chosen, key=lambda gpu: gpu.bus)
    inside = ",".join(str(by_bus.index(gpu)) for gpu in chosen)
    return Nodes(sorted([*shared, *map(str, nodes)]), inside, True)


class GpusUntold(AutoresearchError):
    """Which GPUs' device nodes are the run's cannot be told now, where the loop could tell: it is not given every
    GPU's."""

    def __init__(self, env: Mapping[str, str]):
        super().__init__(
            f"cannot tell which device nodes are those of the run's GPUs ({env.get('CUDA_VISIBLE_DEVICES')}): the "
            "driver's table (/proc/driver/nvidia/gpus) could not be read, or a GPU's node not opened",
            hint="the loop told them at its start; see that the NVIDIA driver is loaded and the machine has memory to "
            "spare, then run again: the experiment in flight is trained then",
        )


def run_nodes(env: Mapping[str, str]) -> Nodes:
    """`own_nodes(env)`, as an evaluator takes them: where the process that started it found the run's own GPUs' nodes
    (evaluator/promises.py), GpusUntold rather than every GPU's. One that could not tell them at that moment (the
    driver's table unread, a node not opened) bound every GPU of the machine into the run's sandbox: a train.py that set
    CUDA_VISIBLE_DEVICES again could train on another worker's GPU, or fill its memory (red team)."""
    nodes = own_nodes(env)
    if not nodes.own_only and promises.GPUS in promises.promised():
        raise GpusUntold(env)
    return nodes
