"""How long the loop takes to size and remove trees a run or an agent's turn can leave (files.disk_use and
files.remove_tree, what the quarantine's prune and a run's box removal do), against shutil.rmtree. CPU only.

    python bench/tree_walks.py [N]   # default 200000

Shapes: N empty folders in one folder, N empty files in one folder, and one chain of N/50 nested folders (deeper than a
path can name, rmtree fails it with RecursionError).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.files import disk_use, remove_tree


def make(top: Path, shape: str, n: int) -> None:
    top.mkdir()
    here = os.open(top, os.O_RDONLY)
    for i in range(n if shape != "chain" else n // 50):
        if shape == "folders":
            os.mkdir(f"d{i}", dir_fd=here)
        elif shape == "files":
            os.close(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, dir_fd=here))
        else:
            os.mkdir("d", dir_fd=here)
            here, above = os.open("d", os.O_RDONLY, dir_fd=here), here
            os.close(above)
    os.close(here)


def timed(call) -> str:
    started = time.perf_counter()
    try:
        call()
    except RecursionError:
        return "RecursionError"
    return f"{time.perf_counter() - started:.1f} s"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as scratch:
        for shape in ("folders", "files", "chain"):
            top = Path(scratch) / shape
            make(top, shape, n)
            sized = timed(lambda top=top: disk_use(top))
            removed = timed(lambda top=top: remove_tree(top))
            make(top, shape, n)
            rmtree = timed(lambda top=top: shutil.rmtree(top))
            remove_tree(top)
            print(f"{shape:8} disk_use {sized:>8}  remove_tree {removed:>8}  shutil.rmtree {rmtree:>15}", flush=True)


if __name__ == "__main__":
    main()
