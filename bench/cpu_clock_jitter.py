"""How steady the CPU clock is: optimizer steps per CPU second of a small transformer, window after window.

    OMP_WAIT_POLICY=PASSIVE python bench/cpu_clock_jitter.py [--threads 2] [--windows 6] [--seconds 15]

The loop's CPU clock counts a run's CPU time / its threads (evaluator/clock.py). Where that clock is steady,
the same train.py takes the same number of steps in every run. Prints each window's steps per CPU second
(user + system time of this process / threads) and their coefficient of variation. The model is close to the
tiny preset's (3 layers, width 96, 2048 tokens, 32 rows of 256), built from torch's own layers.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=15.0, help="CPU seconds / threads per window")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers = [torch.nn.TransformerEncoderLayer(96, 3, 384, batch_first=True, dropout=0.0) for _ in range(3)]
    model = torch.nn.Sequential(torch.nn.Embedding(2048, 96), *layers, torch.nn.Linear(96, 2048))
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    tokens = torch.randint(0, 2048, (32, 257))

    def step() -> None:
        logits = model(tokens[:, :-1])
        torch.nn.functional.cross_entropy(logits.reshape(-1, 2048), tokens[:, 1:].reshape(-1)).backward()
        opt.step()
        opt.zero_grad()

    def clock() -> float:
        return time.process_time() / args.threads

    step()  # the first step allocates
    rates = []
    for _ in range(args.windows):
        start, wall, steps = clock(), time.perf_counter(), 0
        while clock() - start < args.seconds:
            step()
            steps += 1
        rates.append(steps / (clock() - start))
        print(f"{rates[-1]:.3f} steps per CPU second, {time.perf_counter() - wall:.1f} s wall", flush=True)
    print(f"coefficient of variation: {statistics.stdev(rates) / statistics.mean(rates):.3f}")


if __name__ == "__main__":
    main()
