"""The tiny train.py's step on the CPU: eager, its model compiled, or its model and Muon's update compiled.

    OMP_WAIT_POLICY=PASSIVE PYTHONPATH=$PWD/src python3 bench/cpu_compile.py {eager,model,both} [--steps 20]

Builds the model and optimizer of the template (the tiny preset's constants) on random tokens, in a fresh Inductor
cache, and prints the first step's time (the cold compile) and the steady step's wall and CPU time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("eager", "model", "both"))
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp()  # a cold compile, before torch reads it
    import torch

    from autoresearch.config.presets import get_preset
    from autoresearch.workspace.init import train_py_for

    preset = get_preset("tiny")
    path = Path(tempfile.mkdtemp()) / "tiny_train.py"
    path.write_text(train_py_for(preset))
    spec = importlib.util.spec_from_file_location("tiny_train", path)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)  # no training: the loop is behind `if __name__ == "__main__"`

    torch.manual_seed(0)
    width = -(-train.DEPTH * train.ASPECT_RATIO // train.HEAD_DIM) * train.HEAD_DIM
    config = train.GPTConfig(preset.vocab_size, preset.seq_len, train.DEPTH, width // train.HEAD_DIM, width)
    model = train.GPT(config, torch.device("cpu"))
    model.init_weights()
    optimizer = train.MuonAdamW(model, compile_update=args.mode == "both")
    if args.mode != "eager":
        model.compile(dynamic=False)
    rows = train.TOTAL_BATCH_SIZE // preset.seq_len
    x = torch.randint(0, preset.vocab_size, (rows, preset.seq_len))
    y = torch.randint(0, preset.vocab_size, (rows, preset.seq_len))

    def step() -> None:
        model(x, y).backward()
        optimizer.step(0.5, 0.9, 0.1)
        optimizer.zero_grad()

    wall, cpu = time.perf_counter(), time.process_time()
    step()
    print(f"{args.mode}: first step {time.perf_counter() - wall:.1f} s wall, {time.process_time() - cpu:.1f} s CPU")
    for _ in range(3):
        step()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        step()
    per_wall = (time.perf_counter() - wall) / args.steps * 1000
    per_cpu = (time.process_time() - cpu) / args.steps * 1000
    print(f"{args.mode}: {per_wall:.0f} ms wall, {per_cpu:.0f} ms CPU per step")


if __name__ == "__main__":
    main()
