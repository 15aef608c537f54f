"""What a process inside the sandbox gets of the environment: an allow-list of the caller's variables, never one
named like a secret, with HOME and TMPDIR where it can write and its own GPUs numbered as CUDA sees them there."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from autoresearch.evaluator import shown as shown_paths
from autoresearch.evaluator.gpu_nodes import Nodes, run_nodes
from autoresearch.files import holds

SECRET_NAME = re.compile("KEY|TOKEN|SECRET|PASSWORD|PASS$|CREDENTIAL|AUTH|PAT$", re.IGNORECASE)
# What train.py's process gets of the environment: an allow-list (a deny-list let database URLs with
# passwords and *_PAT tokens through). Python, the locale, the GPU and the math libraries; of our own
# settings, the device, the peak FLOP/s and the channel. The rest (result file, config) is the evaluator's.
PASSED_THROUGH = frozenset(
    {
        "PATH", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR", "USER", "LOGNAME", "VIRTUAL_ENV", "CONDA_PREFIX",
        "CONDA_DEFAULT_ENV", "LD_LIBRARY_PATH", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "HOME",
        "AUTORESEARCH_DEVICE", "AUTORESEARCH_PEAK_FLOPS", "AUTORESEARCH_CHANNEL",
    }
)  # fmt: skip
PASSED_PREFIXES = ("LC_", "PYTHON", "CUDA_", "NVIDIA_", "TORCH", "PYTORCH_", "TRITON_", "MKL_", "OPENBLAS_", "KMP_")
PRIVATE_TMP = Path("/tmp")  # every confined process's own


def scrubbed_env(env: Mapping[str, str]) -> dict[str, str]:
    """The part of the caller's environment train.py may see (see PASSED_THROUGH), never a secret's name."""
    return {
        name: value
        for name, value in env.items()
        if (name in PASSED_THROUGH or name.startswith(PASSED_PREFIXES)) and not SECRET_NAME.search(name)
    }


def box_environment(env: Mapping[str, str], workdir: Path, writable: Sequence[Path] = ()) -> dict[str, str]:
    """The confined process's environment: `scrubbed_env(env)`, with HOME and TMPDIR where it can write, and what
    its Python needs to find its packages without the real HOME (shown.py: the user's site)."""
    box_env = {**shown_paths.python_environment(), **scrubbed_env(env)}
    for name in ("HOME", "TMPDIR"):
        # Programs write there (caches under ~, gcc under Triton in $TMPDIR): keep it only if it is writable inside.
        if name in box_env and not lies_inside(Path(box_env[name]), [workdir, *writable]):
            box_env[name] = str(PRIVATE_TMP)
    box_env.setdefault("HOME", str(PRIVATE_TMP))
    return box_env


def confined_environment(
    env: Mapping[str, str], workdir: Path, writable: Sequence[Path] = (), nodes: Nodes | None = None
) -> dict[str, str]:
    """`box_environment` for a process inside the sandbox: only its own GPUs' nodes are there (`nodes`, by
    default `run_nodes(env)`), so CUDA_VISIBLE_DEVICES numbers those as CUDA sees them; the outside numbers would
    name no GPU, or the wrong one."""
    box_env = box_environment(env, workdir, writable)
    if (visible := (nodes or run_nodes(env)).visible) is not None:
        box_env.update(CUDA_VISIBLE_DEVICES=visible, CUDA_DEVICE_ORDER="PCI_BUS_ID")
    return box_env


def lies_inside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether `path`, its links followed, is one of `roots` or lies below one."""
    real = Path(path).resolve()
    return any(holds(root, real) for root in roots)
