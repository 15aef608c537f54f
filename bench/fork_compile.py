"""A forked process's first torch.compile, with what its parent imported in the garbage collector's scans or not.

    PYTHONPATH=$PWD/src python3 bench/fork_compile.py --pairs 4

The parent imports torch and its compiler as the fork server does (harness/boot.py COMPILER), then forks a child
that builds the template's GPT (4 layers, width 256) on the CPU, compiles it and times its first forward and
backward, with a warm compile cache (a first child fills it). Each pair runs one child forked without
`gc.freeze()` in the parent and one with it. Inductor compiles in the child's own thread
(TORCHINDUCTOR_COMPILE_THREADS=1): a process that has compiled cannot be forked, nor can its workers.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import os
import sys
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "src" / "autoresearch" / "workspace" / "templates" / "train.py"


def first_step(template) -> float:
    import torch

    config = template.GPTConfig(512, 256, 4, 4, 256)
    model = template.GPT(config, torch.device("cpu"))
    model.init_weights()
    model.compile(dynamic=False)
    x, y = torch.randint(0, 512, (2, 256)), torch.randint(0, 512, (2, 256))
    started = time.perf_counter()
    model(x, y).backward()
    return time.perf_counter() - started


def in_a_fork(freeze: bool) -> float:
    """The child's first step, forked after freezing or not (the freeze is undone in the parent afterwards)."""
    read, write = os.pipe()
    if freeze:
        gc.collect()
        gc.freeze()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        spec = importlib.util.spec_from_file_location("template", TEMPLATE)
        template = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(template)
        os.write(write, f"{first_step(template):.3f}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as answer:
        seconds = float(answer.read())
    os.waitpid(pid, 0)
    gc.unfreeze()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", "/tmp/fork-compile-cache")
    os.environ["TORCHINDUCTOR_COMPILE_THREADS"] = "1"
    import torch  # noqa: F401

    for name in ("torch._dynamo", "torch._inductor.compile_fx", "torch.nn.attention.flex_attention"):
        importlib.import_module(name)
    print(f"cache filled: first step {in_a_fork(False):.2f}s", flush=True)
    for _ in range(args.pairs):
        plain, frozen = in_a_fork(False), in_a_fork(True)
        print(f"first step: {plain:.2f}s as it was, {frozen:.2f}s with the parent's objects frozen", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
