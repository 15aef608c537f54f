"""How steady the CPU clock is: optimizer steps per CPU second of a small transformer, window after window.

    OMP_WAIT_POLICY=PASSIVE python bench/cpu_clock_jitter.py [--threads 2] [--windows 6] [--seconds 15] [--calibrate 2]

The loop's CPU clock counts a run's CPU time / its threads (evaluator/clock.py). Where that clock is steady,
the same train.py takes the same number of steps in every run. Prints each window's steps per CPU second
(user + system time of this process / threads) and their coefficient of variation. The model is close to the
tiny preset's (3 layers, width 96, 2048 tokens, 32 rows of 256), built from torch's own layers.

`--calibrate S` asks whether a clock scaled by the machine's speed just before a run would be steadier: before
each window it measures S CPU seconds of the same steps, then prints the correlation of that rate with the
window's and the variation of the windows' rates divided by it.
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
    parser.add_argument("--calibrate", type=float, default=0.0, help="CPU seconds of steps measured before each window")
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

    def rate(seconds: float) -> float:
        start, steps = clock(), 0
        while clock() - start < seconds:
            step()
            steps += 1
        return steps / (clock() - start)

    def variation(values: list[float]) -> float:
        return statistics.stdev(values) / statistics.mean(values)

    step()  # the first step allocates
    rates, before = [], []
    for _ in range(args.windows):
        if args.calibrate:
            before.append(rate(args.calibrate))
        wall = time.perf_counter()
        rates.append(rate(args.seconds))
        told = f" (calibration before it: {before[-1]:.3f})" if before else ""
        print(f"{rates[-1]:.3f} steps per CPU second{told}, {time.perf_counter() - wall:.1f} s wall", flush=True)
    print(f"coefficient of variation: {variation(rates):.3f}")
    if before:
        print(f"correlation with the calibration before: {statistics.correlation(before, rates):.2f}")
        scaled = [r / b for r, b in zip(rates, before, strict=True)]
        print(f"coefficient of variation, each window / its calibration: {variation(scaled):.3f}")


if __name__ == "__main__":
    main()
