"""What a shell agent's turn costs to start: its namespaces (agents/namespace.py), then `true`, with temporary
folders of its own (an overlay of /tmp, /var/tmp and /dev/shm each) and with yours, interleaved.

    PYTHONPATH=$PWD/src python3 bench/agent_turn_start.py --turns 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from autoresearch.agents import namespace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20, help="turns started of each kind")
    args = parser.parse_args()
    if (why := namespace.temporary_unavailable()) is not None:
        raise SystemExit(f"no temporary folders of the agent's own here: {why}")
    workspace = Path(tempfile.mkdtemp(prefix="turn-start-"))
    (workspace / ".autoresearch").mkdir()
    own = namespace.temporary_folders
    seconds: dict[str, list[float]] = {"its own": [], "yours": []}
    try:
        for _ in range(args.turns):
            for kind in seconds:
                namespace.temporary_folders = own if kind == "its own" else (lambda *_, **__: [])
                start = time.perf_counter()
                way, env = namespace.entered(workspace, dict(os.environ))
                subprocess.run([*way, "true"], cwd=workspace, env=env, check=True)
                seconds[kind].append(time.perf_counter() - start)
    finally:
        namespace.temporary_folders = own
        shutil.rmtree(workspace, ignore_errors=True)
    for kind, times in seconds.items():
        median, fastest = statistics.median(times) * 1e3, min(times) * 1e3
        print(f"temporary folders {kind}: median {median:.0f} ms, min {fastest:.0f} ms")


if __name__ == "__main__":
    main()
