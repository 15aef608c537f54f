"""Does a run find what the runs before it compiled? The one-worker loop on the CPU, with the tiny model
compiled by Inductor there too (the shipped train.py compiles on CUDA only), a baseline of two seeds and one
change; prints each run's seconds from its start to the clock (a cold compile: ~85 s on 2 cores).

    AUTORESEARCH_CACHE=/tmp/cc PYTHONPATH=$PWD/src:$PWD/bench python bench/compile_cache_hits.py
"""

from __future__ import annotations

import json
from pathlib import Path

from common import fresh_loop
from loop_overhead import NudgeAgent


def main() -> None:
    loop = fresh_loop(Path("/tmp/compile-cache-hits"), "tiny", 15, 2)
    source = loop.ws.read_train_py()
    source = source.replace("    if cuda:  # one graph", "    if True:  # one graph")
    loop.ws.write_train_py(source.replace("compile_update=cuda)", "compile_update=True)"))
    loop.git.commit("compile on the CPU too", "train.py")
    loop.baseline()
    loop.step(NudgeAgent())
    for path in sorted(loop.ws.state.glob("runs/*/result.json")):
        result = json.loads(path.read_text())
        print(path.parent.name, f"start to clock {result['untimed_seconds']:.1f}s", "valid" if result["valid"] else "")


if __name__ == "__main__":
    main()
