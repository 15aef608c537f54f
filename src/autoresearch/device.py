"""The device an experiment runs on: which one, its precision, its peak FLOP/s, its memory high-water mark."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

from autoresearch.errors import ConfigError
from autoresearch.evaluator.cores import DEVICE_ENV, PEAK_FLOPS_ENV, usable_cores

# Dense bf16 tensor-core peak by GPU name, from the vendors' datasheets (no sparsity).
GPU_PEAK_BF16 = (
    ("H200", 989.5e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989.5e12),
    ("H800", 989.5e12),
    ("GH200", 989.5e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)


def pick_device() -> torch.device:
    """$AUTORESEARCH_DEVICE if set, else CUDA, else Apple MPS, else the CPU."""
    if name := os.environ.get(DEVICE_ENV):
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_available() -> None:
    """Refuse an $AUTORESEARCH_DEVICE this machine's torch cannot train on (CUDA with a CPU build or no GPU, a GPU
    number past the last, MPS off a Mac), with what to do: each run crashed deep in torch, with a traceback.
    It may start CUDA: the evaluator calls it only once its experiment is forked."""
    name = os.environ.get(DEVICE_ENV)
    if not name:
        return
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            why = "this torch sees no CUDA GPU" + ("" if torch.backends.cuda.is_built() else " (a CPU build)")
        elif device.index is not None and device.index >= count:
            why = f"this torch sees {count} CUDA GPU{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1})"
        else:
            return
    elif device.type == "mps" and not torch.backends.mps.is_available():
        why = "Apple MPS is not available here"
    else:
        return
    raise ConfigError(
        f"${DEVICE_ENV} is {name!r}, but {why}",
        hint=f"unset {DEVICE_ENV} to let autoresearch choose, or set it to a device this machine has (cpu)",
    )


def describe(device: torch.device) -> str:
    """The device's name; a GPU's with the start of its UUID, so that runs on several GPUs say which one."""
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        uuid = str(getattr(properties, "uuid", "") or "")
        return f"{properties.name} ({uuid[:8]})" if uuid else properties.name
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({usable_cores()} cores)"


def model(device: torch.device) -> str:
    """The kind of device, without which one of its kind: what its speed, hence a score, depends on."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"{cpu_name()} (MPS)"
    return cpu_name()


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model as the system names it ("AMD EPYC 7B13", "Apple M3 Max"); on ARM Linux, which names
    none, the core's implementer and part; else the architecture."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    if fields.get("model name"):
        return fields["model name"]
    if fields.get("CPU implementer"):  # the first core's: a big.LITTLE chip lists several parts
        return f"CPU ({platform.machine()}, implementer {fields['CPU implementer']}, part {fields.get('CPU part')})"
    if sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            brand = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            if brand:
                return brand
    return f"CPU ({platform.machine() or 'unknown'})"


def peak_flops(device: torch.device) -> float | None:
    """Peak bf16 FLOP/s of the device for MFU; None where unknown (set $AUTORESEARCH_PEAK_FLOPS)."""
    if override := os.environ.get(PEAK_FLOPS_ENV):
        return float(override)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in GPU_PEAK_BF16 if key in name), None)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision elsewhere (CPU bf16 is slow on most laptops)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10
