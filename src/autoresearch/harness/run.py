"""The runtime train.py talks to. It runs in the experiment's own (confined) process and holds no secret:
the data, the clock and the score belong to the evaluator on the other end of the channel (wire.py).

    run = harness.start()
    run.set_model(model)                        # the graph is exported now; the evaluator will run it
    batches = run.train_batches(DEVICE_BATCH_SIZE)
    while not run.time_up:
        ...one optimizer step, using run.progress (0 -> 1) for schedules...
        run.step_done(loss)
    run.finish(flops_per_token=...)             # the weights go to the evaluator, which scores them

The first `untimed_steps` steps (compilation, warm-up) run before the clock, on random tokens; the
clock starts after them and `time_up` turns true when the budget has passed on it.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import torch

from autoresearch import device as devices
from autoresearch.harness.batches import TrainBatches
from autoresearch.wire import Channel

LOSS_LIMIT = 100.0  # a training loss above this (or NaN) means the run has diverged: stop at once
# The weights must be in within the budget, the last step's grace and the evaluator's `handover_seconds`, on the
# training clock (evaluator/session.py): a model whose hand-over takes longer than that, at this rate, stops training
# that much earlier.
HANDOVER_BYTES_PER_S = 250e6


class TrainingFailed(RuntimeError):
    """Training diverged or broke a rule of the harness."""


def start() -> Run:
    """Connect to the evaluator that started this process. Run by hand (`python train.py`), this
    process becomes the evaluator instead, which runs train.py confined and scores it."""
    channel = Channel.from_env()
    if channel is None:
        _become_referee()
    constants, _ = channel.request({"op": "hello"})
    return Run(channel, constants)


def _become_referee() -> None:
    script = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    if script is None or not script.is_file():
        raise TrainingFailed("harness.start() must be called from a train.py run as `python train.py`")
    sys.stdout.flush()
    sys.stderr.flush()
    from autoresearch.evaluator.sandbox import evaluator_env

    argv = [sys.executable, "-m", "autoresearch.evaluator.referee", "--train-py", str(script)]
    os.execve(sys.executable, argv, evaluator_env(os.environ))


class Run:
    def __init__(self, channel: Channel, constants: dict):
        self._channel = channel
        self.seq_len: int = constants["seq_len"]
        self._eval_batch_rows: int = constants["eval_batch_rows"]
        self.vocab_size: int = constants["vocab_size"]
        self.budget_seconds: float = constants["budget_seconds"]
        self.untimed_steps: int = constants["untimed_steps"]
        self._train_rows: int = constants["train_rows"]
        # The evaluator's training clock, read here the same way: wall time, or on a CPU this process's
        # CPU time over the cores it is given (evaluator/clock.py). The evaluator's reading is the one that counts.
        self._cpu_cores: float = constants["clock_cores"] if constants.get("clock") == "cpu" else 0
        self.device = devices.pick_device()
        self.batches: TrainBatches | None = None
        self.step = 0
        self._exported = None
        self._handover = 0.0  # seconds of the budget kept for handing the weights over (a large model's)
        self._last_step = 0.0  # the last timed step's length on the training clock
        self._longest_step: float = constants["longest_step"]  # the evaluator's grace allows for no longer one
        self._handover_allowed: float = constants["handover_seconds"]  # past that grace, for the weights to come in
        self._last_step_done: float | None = None
        self._clock_start: float | None = None
        self._clock_stop: float | None = None
        self._pending_loss: torch.Tensor | None = None
        self._last_loss = math.nan
        self._last_log = 0.0
        self._step_began = time.perf_counter()

    # -- what train.py reads --------------------------------------------------------------------

    @property
    def elapsed(self) -> float:
        """Seconds on the training clock (0 until the untimed steps are done)."""
        if self._clock_start is None:
            return 0.0
        return (self._clock_stop or self._now()) - self._clock_start

    @property
    def progress(self) -> float:
        """Fraction of the budget used, 0 -> 1: drive learning-rate and other schedules with it."""
        return min(1.0, self.elapsed / self.budget_seconds)

    @property
    def time_up(self) -> bool:
        """Whether to stop now: the budget has passed, or the next step (as long as the last) would end further
        past it than the evaluator's grace allows for (a step longer than its `longest_step`)."""
        late_step = max(0.0, self._last_step - self._longest_step)
        return self._clock_start is not None and self.elapsed + late_step >= self.budget_seconds - self._handover

    def autocast(self):
        """The precision context for forward passes: bf16 autocast on CUDA, none elsewhere."""
        return devices.autocast(self.device)

    # -- what train.py calls --------------------------------------------------------------------

    def set_model(self, model: torch.nn.Module) -> None:
        """Hand the model to be scored to the evaluator, before training: its graph (forward(idx) ->
        logits) is exported now, its weights at finish(). The evaluator runs that graph, never this
        process's code, so the model must export (the error says what stops it)."""
        if self._clock_start is not None:
            raise TrainingFailed("set_model() must be called before the clock starts")
        started = time.perf_counter()
        from autoresearch.harness.handover import Exported, HandOverError

        try:
            self._exported = Exported(model, self._eval_batch_rows, self.seq_len, self.vocab_size, self.device)
        except HandOverError as exc:
            self._channel.send({"op": "model", "error": str(exc)})
            raise TrainingFailed(str(exc)) from None
        self._channel.send({"op": "model"}, self._exported.document)
        self._handover = max(0.0, self._exported.nbytes / HANDOVER_BYTES_PER_S - self._handover_allowed)
        print(f"model handed over: graph exported in {time.perf_counter() - started:.1f}s", flush=True)

    def train_batches(self, batch_size: int) -> TrainBatches:
        """The training data: an endless iterator of (inputs, targets), each (batch_size, seq_len), on
        the device. Random tokens until the clock starts, the training rows from then on."""
        if self.batches is not None:
            raise RuntimeError("train_batches() may be called once per run")
        self.batches = TrainBatches(self._channel, batch_size, self.seq_len + 1, self.device)
        self._step_began = time.perf_counter()  # the untimed steps start now
        print(f"train data: {self._train_rows:,} rows of {self.seq_len} tokens, served by the evaluator", flush=True)
        return self.batches

    def step_done(self, loss: torch.Tensor) -> None:
        """Call after each optimizer step with that step's loss. Stops the run if training diverged."""
        self.step += 1
        if self._pending_loss is not None:  # read the previous step's loss: the device stays a step ahead
            self._last_loss = self._pending_loss.item()
            if not self._last_loss <= LOSS_LIMIT:
                raise TrainingFailed(f"training diverged: loss is {self._last_loss} at step {self.step - 1}")
        self._pending_loss = loss.detach().float()
        if self._clock_start is None:
            devices.synchronize(self.device)  # off the clock: the log says what each warm-up step took
            now = time.perf_counter()
            print(f"untimed step {self.step} of {self.untimed_steps}: {now - self._step_began:.1f}s", flush=True)
            self._step_began = now
            if self.step >= self.untimed_steps:
                self._start_clock()
            return
        self._channel.send({"op": "step", "loss": self._last_loss if math.isfinite(self._last_loss) else None})
        done = self.elapsed
        self._last_step = done - (self._last_step_done or 0.0)
        self._last_step_done = done
        now = time.perf_counter()
        if now - self._last_log >= (10 if self.device.type == "cuda" else 5):
            self._last_log = now
            left = max(0.0, self.budget_seconds - self.elapsed)
            print(f"step {self.step:5d} | {100 * self.progress:5.1f}% | loss {self._last_loss:.4f} | {left:.0f}s left")

    def finish(self, flops_per_token: float | None = None) -> None:
        """Stop the clock and hand the weights over; the evaluator scores them and prints the result."""
        devices.synchronize(self.device)
        self._clock_stop = self._now()
        if self._exported is None:
            raise TrainingFailed("no model to score: call run.set_model(model) before training")
        if self._pending_loss is not None and not self._pending_loss.item() <= LOSS_LIMIT:
            raise TrainingFailed(f"training diverged: loss is {self._pending_loss.item()} at step {self.step}")
        self._channel.request(  # answered once the evaluator has read its clock: what follows is not training
            {
                "op": "stop",
                "steps": self.step,
                "flops_per_token": flops_per_token,
                "peak_memory_mb": devices.peak_memory_mb(self.device),
            }
        )
        # The steps on the clock, as the summary's num_steps counts them (the untimed ones trained on random tokens).
        # Said before the weights go: once they are in, the evaluator stops this process, maybe before a later print.
        timed = self.step - self.untimed_steps if self._clock_start is not None else 0
        print(
            f"training done: {timed} steps in {self.elapsed:.1f}s (after {self.step - timed} untimed); handing the "
            "weights over",
            flush=True,
        )
        self._channel.send({"op": "weights"}, self._exported.weights())

    # -- internals ------------------------------------------------------------------------------

    def _now(self) -> float:
        return time.process_time() / self._cpu_cores if self._cpu_cores else time.perf_counter()

    def _start_clock(self) -> None:
        if self._exported is None:
            raise TrainingFailed("call run.set_model(model) before training: the evaluator needs the graph first")
        devices.synchronize(self.device)
        answer, _ = self._channel.request({"op": "clock"})
        if "error" in answer:
            raise TrainingFailed(answer["error"])
        self._clock_start, self._last_log = self._now(), time.perf_counter()
        if self.batches is not None:
            self.batches.clock_started()
        print(f"clock started after {self.step} untimed steps; budget {self.budget_seconds:g}s", flush=True)
