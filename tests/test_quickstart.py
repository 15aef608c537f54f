"""quickstart.sh's choices, with stand-ins for pip, Python and autoresearch (no install, no training): which PyTorch
build it asks for, and that it installs nothing twice."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if not sys.platform.startswith("linux"):
    pytest.skip("the CPU index is chosen on Linux only", allow_module_level=True)


def _tool(path: Path, body: str) -> None:
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _quickstart(tmp_path: Path, gpu: bool, **variables: str) -> list[str]:
    """Run a copy of quickstart.sh where nothing is installed yet; the commands its stand-ins were given."""
    log, venv, path = tmp_path / "calls.log", tmp_path / ".venv" / "bin", tmp_path / "path"
    if path.exists():  # run again
        return _ran(tmp_path, path, log, variables)
    (tmp_path / "quickstart.sh").write_bytes((ROOT / "quickstart.sh").read_bytes())
    (tmp_path / "pyproject.toml").write_text("")
    venv.mkdir(parents=True)
    path.mkdir()
    _tool(venv / "python", '[ "$1" = -c ] && [ ! -f "$(dirname "$0")/torch" ] && exit 1\nexit 0\n')
    pip = '[ "$1" = config ] && exit 1\n'  # no index of the user's in pip's configuration
    pip += f'echo "pip $*" >> {log}\ncase "$*" in *torch*) touch "$(dirname "$0")/torch";; esac\n'
    _tool(venv / "pip", pip)
    _tool(
        venv / "autoresearch",
        f'echo "autoresearch $*" >> {log}\n[ "$1" = init ] && mkdir -p "$2" && touch "$2/autoresearch.json"\nexit 0\n',
    )
    for program in ("uname", "touch", "dirname", "mkdir"):  # all the script runs but bash's own and the stand-ins
        (path / program).symlink_to(shutil.which(program))
    if gpu:
        _tool(path / "nvidia-smi", "exit 0\n")
    return _ran(tmp_path, path, log, variables)


def _ran(tmp_path: Path, path: Path, log: Path, variables: dict[str, str]) -> list[str]:
    env = {"PATH": str(path), "HOME": str(tmp_path), **variables}
    done = subprocess.run(["/bin/bash", "quickstart.sh"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return log.read_text().splitlines()


def test_without_an_nvidia_gpu_it_installs_pytorchs_cpu_build_not_pypis_cuda_one(tmp_path: Path) -> None:
    """BROKE, fixed (a README audit): it said "the CPU build, ~200 MB" and ran `pip install torch==2.13.0`, which on
    Linux is PyPI's CUDA build with ~3 GB of NVIDIA libraries."""
    calls = _quickstart(tmp_path, gpu=False)
    assert calls[0] == "pip install --progress-bar on torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    assert calls[1:] == [
        "pip install --progress-bar on -e .",
        "autoresearch init demo --preset tiny --dataset python-source",
        "autoresearch run --agent tune --max-experiments 10",
    ]


def test_with_an_nvidia_gpu_it_installs_pypis_build_and_run_again_installs_nothing(tmp_path: Path) -> None:
    calls = _quickstart(tmp_path, gpu=True)
    assert calls[0] == "pip install --progress-bar on torch==2.13.0"
    assert _quickstart(tmp_path, gpu=True)[len(calls) :] == ["autoresearch run --agent tune --max-experiments 10"]


def test_the_cpu_build_can_come_from_a_mirror_of_ones_own(tmp_path: Path) -> None:
    calls = _quickstart(tmp_path, gpu=False, TORCH_INDEX="http://127.0.0.1:8080/whl/cpu")
    assert calls[0] == "pip install --progress-bar on torch==2.13.0 --index-url http://127.0.0.1:8080/whl/cpu"


def test_a_pip_index_of_the_users_own_is_kept(tmp_path: Path) -> None:
    """Red team: PIP_INDEX_URL set (a company's mirror where download.pytorch.org is blocked), the CPU index overrode
    it and the install failed. The user's index is kept; TORCH_INDEX still names the CPU build's where it is set."""
    calls = _quickstart(tmp_path, gpu=False, PIP_INDEX_URL="https://mirror.example.com/simple")
    assert calls[0] == "pip install --progress-bar on torch==2.13.0"
    (tmp_path / "again").mkdir()
    again = _quickstart(tmp_path / "again", gpu=False, PIP_INDEX_URL="https://m/simple", TORCH_INDEX="https://m/cpu")
    assert again[0] == "pip install --progress-bar on torch==2.13.0 --index-url https://m/cpu"
