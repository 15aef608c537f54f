"""The evaluator's side of the channel during training: it serves the data and keeps the clock.

The rules, all measured here, on the training clock this process reads (evaluator/clock.py: wall time
on a GPU, the experiment's CPU time on a CPU):
- before the clock starts the experiment gets random tokens, so nothing it does then gains anything;
  its graph must be handed over before the clock starts (it is fixed from then on);
- the clock runs `budget_seconds`; training rows are served until then plus the grace its last step
  needs (the clock is read between steps), random tokens after;
- `stop` must come within the budget plus that grace, and the weights within that and HANDOVER_SECONDS more,
  on the same clock: the hand-over is on the clock, so training on after `stop` while weights of a padded size
  trickle in gains nothing (the harness ends training early enough for its model's size: harness/run.py).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.evaluator.clock import TrainingClock, describe
from autoresearch.evaluator.feeder import MAX_ROWS_PER_BATCH, Feeder
from autoresearch.evaluator.result import TRAINING
from autoresearch.files import write_json_atomic
from autoresearch.visible import visible_line
from autoresearch.wire import Channel, ChannelClosed, PayloadRefused

PROGRESS_EVERY = 1.0  # seconds between writes of the progress file
# The grace past the budget for the last step is the experiment's to use as it likes: a train.py that reports a step
# only every `longest_step` trains that much longer (~1.5 of it), and 1 % more training is about half the margin of
# a 5-minute run. So the step allowed for is short (0.5 % of the budget, at least MIN_STEP_S): an honest longer
# step costs only its excess (the harness starts no step that would end past the grace), the cheat gains ~1 %.
MAX_STEP_SHARE = 0.005
MIN_STEP_S = 1.0
LAST_STEP_FACTOR = 1.5  # the last step may take this many typical steps (it began before the budget passed)
GRACE_SLACK_S = 0.25  # and this much more: a pause of Python's or the clock's granularity
HANDOVER_SECONDS = 0.5  # past the budget and the last step's grace, on the training clock, the weights must be in


class ProtocolBroken(Exception):
    """The experiment sent something the protocol does not allow."""


@dataclass
class Timeline:
    """What the experiment did, when. `go`, `clock`, `stop` and `weights` are this process's monotonic
    (wall) clock; `on_clock`, `trained` and `steps` are the training clock's seconds."""

    go: float = 0.0
    hello: float | None = None  # train.py called harness.start()
    model: float | None = None  # its graph came
    clock: float | None = None
    stop: float | None = None
    weights: float | None = None
    on_clock: float = 0.0  # the training clock's reading when it started
    trained: float | None = None  # training-clock seconds from its start to `stop`
    handed_over: float | None = None  # training-clock seconds from its start to the weights' arrival
    steps: list[float] = field(default_factory=list)  # the training clock at each timed step
    timed_rows: int = 0
    program: bytes | None = None
    program_error: str | None = None  # why the experiment could not hand its model over
    weights_data: bytes | None = None
    reported: dict = field(default_factory=dict)  # the experiment's own figures: shown, never trusted

    @property
    def typical_step(self) -> float:
        gaps = [b - a for a, b in zip(self.steps, self.steps[1:], strict=False)]
        return statistics.median(gaps) if gaps else 0.0

    def grace(self, budget: float) -> float:
        """How far past the budget the last step may end: the clock is read between steps. The steps are the
        experiment's own reports, which it may space out as it likes: the step allowed for is at most
        `longest_step(budget)` (the harness starts no longer step that would end past it: harness/run.py)."""
        return LAST_STEP_FACTOR * min(self.typical_step, longest_step(budget)) + GRACE_SLACK_S

    def last_steps(self, trained: float, budget: float) -> str:
        """Where the time past the budget went, for the reason a late run gives: an honest run is late when the
        machine stalls in its last step (the harness starts no step that would end past the grace)."""
        ends = [0.0, *(s - self.on_clock for s in self.steps)]  # the clock's start, then each step's end
        last = ends[-1] - ends[-2] if len(ends) > 1 else 0.0
        after = trained - ends[-1]
        return (
            f"its last step took {last:.2f}s, a typical one {self.typical_step:.2f}s, and {after:.2f}s passed from "
            f"it to `stop`; the grace past the budget was {self.grace(budget):.2f}s"
        )

    def start_up(self) -> str | None:
        """Where the time from "go" to the clock went, for the run's log; None if the clock never started."""
        if self.clock is None or self.hello is None or self.model is None:
            return None
        return (
            f"start-up: the clock started {self.clock - self.go:.1f}s after go: harness.start() at "
            f"{self.hello - self.go:.2f}s, the graph at {self.model - self.go:.2f}s, then the untimed steps"
        )


def finite(value) -> float | None:
    """A number the experiment sent, as a finite float; None where it is none. An integer too large for a float
    (JSON has no limit) raised OverflowError out of the evaluator, which then stopped the loop (red team)."""
    if not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def longest_step(budget: float) -> float:
    """The longest step the grace past the budget allows for."""
    return max(MAX_STEP_SHARE * budget, MIN_STEP_S)


class Session:
    def __init__(self, channel: Channel, feeder: Feeder, constants: dict, budget_seconds: float, clock: TrainingClock,
                 task_limit: int | None = None):  # fmt: skip
        self.channel, self.feeder, self.clock = channel, feeder, clock
        # "go" carries the RLIMIT_NPROC the harness sets before train.py runs (evaluator/tasks.py), where it applies.
        self.go = {"op": "go", **({"tasks": task_limit} if task_limit else {})}
        self.constants = {**constants, "clock": clock.kind, "clock_cores": clock.cores}
        self.constants["longest_step"] = longest_step(budget_seconds)
        self.constants["handover_seconds"] = HANDOVER_SECONDS
        self.budget = budget_seconds
        self.timeline = Timeline()
        self.progress_path: Path | None = None  # where `progress()` is written while the run trains
        self._progress_written = 0.0
        self._loss: float | None = None
        self.on_clock: Callable[[bytes], None] | None = None  # given the handed-over graph when the clock starts

    def elapsed(self) -> float:
        """Training-clock seconds since the clock started (0 before)."""
        t = self.timeline
        if t.clock is None:
            return 0.0
        return t.trained if t.trained is not None else self.clock.read() - t.on_clock

    def serve(self) -> str | None:
        """Answer the experiment until it hands its weights over or ends; why it broke the protocol, if so."""
        channel, t = self.channel, self.timeline
        try:
            t.go = time.monotonic()
            channel.send(self.go)
            while True:
                header, payload = channel.receive()
                op = header.get("op")
                now = time.monotonic()
                if op == "hello":
                    t.hello = t.hello or now
                    channel.send(self.constants)
                elif op == "model":
                    if t.clock is not None or t.program is not None:
                        raise ProtocolBroken("the model was handed over twice, or after the clock started")
                    t.program, t.model = payload, now
                    if error := header.get("error"):
                        t.program_error = visible_line(str(error))[:2000]  # train.py's words: one line, shown
                elif op == "clock":
                    if t.stop is not None:  # no row is served after `stop`: what it "trained" then was on none
                        raise ProtocolBroken("the clock was asked for after `stop`")
                    if t.program is None or t.program_error:
                        channel.send({"error": "hand the model over with run.set_model(model) before training"})
                        continue
                    if t.clock is None:
                        t.clock, t.on_clock = now, self.clock.read()
                        self.write_progress(TRAINING)
                        if self.on_clock:
                            self.on_clock(t.program)
                    channel.send({"ok": True})
                elif op == "batch":
                    channel.send(*self._batch(header))
                elif op == "step":
                    if t.clock is not None and t.stop is None:
                        t.steps.append(self.clock.read())
                        self._loss = finite(header.get("loss"))
                        if now - self._progress_written >= PROGRESS_EVERY:
                            self.write_progress(TRAINING)
                            self._progress_written = now
                elif op == "stop":
                    if t.stop is None:
                        t.stop = now
                        if t.clock is not None:
                            t.trained = self.clock.read() - t.on_clock
                    t.reported = {k: finite(header.get(k)) for k in ("peak_memory_mb", "flops_per_token", "steps")}
                    # The clock is read: the harness waits for this before it hands the weights over. Else what the
                    # experiment did after `stop` while this process was kept waiting for a CPU (exporting, tearing
                    # down) counted on a CPU clock: under load an honest run of a 1 s budget trained "1.4 s".
                    channel.send({"ok": True})
                elif op == "weights":
                    if t.stop is None:
                        raise ProtocolBroken("weights came before `stop`")
                    t.weights, t.weights_data = now, payload
                    if t.clock is not None:
                        t.handed_over = self.clock.read() - t.on_clock
                    return None
                else:
                    raise ProtocolBroken(f"unknown request {op!r}")
        except PayloadRefused as exc:  # before its bytes were read
            return str(exc)
        except ChannelClosed:
            return None  # the experiment ended; what it did decides the verdict
        except ProtocolBroken as exc:
            return str(exc)

    def progress(self, phase: str) -> dict:
        """Where the run is, for `autoresearch status` and the live view. The loss is the experiment's own
        report: shown, never used."""
        t, elapsed = self.timeline, self.elapsed()
        tokens = t.timed_rows * self.constants["seq_len"]
        return {
            "phase": phase,
            "step": len(t.steps),
            "training_seconds": round(elapsed, 2),
            "budget_seconds": self.budget,
            "training_clock": describe(self.clock),
            "tokens_per_second": round(tokens / elapsed, 1) if elapsed > 0 else None,
            "reported_loss": self._loss,
        }

    def write_progress(self, phase: str) -> None:
        if self.progress_path is not None:
            write_json_atomic(self.progress_path, self.progress(phase))

    def _batch(self, header: dict) -> tuple[dict, bytes]:
        n = header.get("rows")
        if not isinstance(n, int) or not 0 < n <= MAX_ROWS_PER_BATCH:
            raise ProtocolBroken(f"a batch of {n!r} rows")
        t = self.timeline
        if t.clock is None or t.stop is not None:
            return {"data": False}, self.feeder.noise(n)
        if self.elapsed() > self.budget + t.grace(self.budget):
            return {"data": False, "time_up": True}, self.feeder.noise(n)
        t.timed_rows += n
        return {"data": True}, self.feeder.rows(n)

    def late(self) -> str | None:
        """Why weights handed over after the clock started came too late, by the clock's rules (Result.late); None
        if they came in time, or there is nothing to time: no weights, or no clock (the referee's to say)."""
        t = self.timeline
        if t.clock is None or t.stop is None or t.weights is None:
            return None
        trained = t.trained if t.trained is not None else 0.0
        if trained > self.budget + t.grace(self.budget):
            return f"trained {trained:.1f}s, past the {self.budget:g}s budget ({t.last_steps(trained, self.budget)})"
        # Not a time by the weights' size after `stop`: a model padded with a buffer its graph barely reads bought
        # as much training after the clock stopped as it liked (up to the 64 GiB taken).
        handed = t.handed_over if t.handed_over is not None else 0.0
        allowed = self.budget + t.grace(self.budget) + HANDOVER_SECONDS
        if handed > allowed:
            return (
                f"the weights came {handed:.1f}s after the clock started (at most {allowed:.1f}s: the budget, the "
                "last step's grace and the hand-over; the time after `stop` counts)"
            )
        return None
