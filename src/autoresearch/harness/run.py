"""The runtime train.py talks to: data, the time budget, fast failure, evaluation, the result file.

    run = harness.start()
    batches = run.train_batches(DEVICE_BATCH_SIZE)
    while not run.time_up:
        ...one optimizer step, using run.progress (0 -> 1) for schedules...
        run.step_done(loss)
    run.finish(model, flops_per_token=...)

The clock starts once the preset's untimed first steps are done (compilation, warm-up) and
`time_up` turns true when the budget has passed on it.
"""

from __future__ import annotations

import hashlib
import math
import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

from autoresearch.config.apparatus import Apparatus, find_config
from autoresearch.config.presets import Preset, get_preset
from autoresearch.data.shards import REPAIR_HINT, Manifest, file_sha256, open_shard
from autoresearch.data.sources import TRAIN, VAL
from autoresearch.data.tokenizer import Tokenizer
from autoresearch.errors import DataError
from autoresearch.evaluator.result import RUN_ID_ENV, Result, result_path
from autoresearch.evaluator.score import NonFiniteLogits, Scorer, batch_size_for, causality_violation, score_rows
from autoresearch.harness import device as devices
from autoresearch.harness.loader import TrainBatches

LOSS_LIMIT = 100.0  # a training loss above this (or NaN) means the run has diverged: stop at once
EVAL_LOGITS_ELEMENTS = 2**30  # cap on batch x seq x vocab per evaluation batch (2 GiB of bf16 logits)


class TrainingFailed(RuntimeError):
    """Training diverged or broke a rule; the result file already says why."""


def harness_code_digest() -> str:
    """SHA-256 over the harness's own source files."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        h.update(path.relative_to(Path(__file__).parent).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def fingerprint(apparatus: Apparatus, manifest: Manifest) -> str:
    """Identifies the apparatus: changes with the harness code, the data, the tokenizer or the budget."""
    key = f"{harness_code_digest()}:{manifest.digest()}:{apparatus.budget_seconds}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def start() -> Run:
    """Load the workspace's locked config and prepared data; pick the device."""
    config = find_config()
    return Run(Apparatus.load(config))


class Run:
    def __init__(self, apparatus: Apparatus):
        self.apparatus = apparatus
        self.preset: Preset = get_preset(apparatus.preset)
        self.data_dir = Path(apparatus.data_dir)
        try:
            self.manifest = Manifest.load(self.data_dir / "manifest.json")
        except FileNotFoundError:
            raise DataError(
                f"no prepared data in {self.data_dir}",
                hint=f"run `autoresearch prepare --dataset {apparatus.dataset} --preset {apparatus.preset}`",
            ) from None
        if self.manifest.preset != self.preset.as_dict():
            raise DataError(f"data in {self.data_dir} was prepared for other preset settings", hint=REPAIR_HINT)
        self.tokenizer = Tokenizer.load(self.data_dir / "tokenizer.json")
        if self.tokenizer.digest() != self.manifest.tokenizer_sha256:
            raise DataError(f"{self.data_dir / 'tokenizer.json'} does not match the shards", hint=REPAIR_HINT)
        self._val_rows = open_shard(self.data_dir, self.manifest.split(VAL)[0], verify=True)[: self.preset.eval_rows]
        self.device = devices.pick_device()
        self.fingerprint = fingerprint(apparatus, self.manifest)
        self._train_check = _BackgroundVerify(self.data_dir, self.manifest)
        self.batches: TrainBatches | None = None
        self.step = 0
        self._clock_start: float | None = None
        self._clock_stop: float | None = None
        self._untimed_batches = 0
        self._last_step_time = time.perf_counter()
        self._step_seconds: list[float] = []
        self._pending_loss: torch.Tensor | None = None
        self._last_loss = math.nan
        self._last_log = 0.0
        self._flops_per_token: float | None = None
        self._launched = psutil.Process().create_time()
        self._milestones = {"harness ready": time.time() - self._launched}

    # -- what train.py reads --------------------------------------------------------------------

    @property
    def seq_len(self) -> int:
        return self.preset.seq_len

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def budget_seconds(self) -> float:
        return self.apparatus.budget_seconds

    @property
    def elapsed(self) -> float:
        """Seconds on the training clock (0 until the untimed steps are done)."""
        if self._clock_start is None:
            return 0.0
        return (self._clock_stop or time.perf_counter()) - self._clock_start

    @property
    def progress(self) -> float:
        """Fraction of the budget used, 0 -> 1: drive learning-rate and other schedules with it."""
        return min(1.0, self.elapsed / self.budget_seconds)

    @property
    def time_up(self) -> bool:
        return self._clock_start is not None and self.elapsed >= self.budget_seconds

    def autocast(self):
        """The precision context for forward passes: bf16 autocast on CUDA, none elsewhere."""
        return devices.autocast(self.device)

    def train_batches(self, batch_size: int) -> TrainBatches:
        """The training data: an endless iterator of (inputs, targets), each (batch_size, seq_len)."""
        if self.batches is not None:
            raise RuntimeError("train_batches() may be called once per run")
        shards = [open_shard(self.data_dir, info, verify=False) for info in self.manifest.split(TRAIN)]
        self.batches = TrainBatches(shards, batch_size, self.device)
        where = "on the device" if self.batches.on_device else "streamed from memory-mapped shards"
        print(f"train data: {self.batches.order.num_rows:,} rows of {self.seq_len} tokens, {where}", flush=True)
        return self.batches

    # -- the training loop ----------------------------------------------------------------------

    def step_done(self, loss: torch.Tensor) -> None:
        """Call after each optimizer step with that step's loss. Stops the run if training diverged."""
        self.step += 1
        if self._pending_loss is not None:  # read the previous step's loss: the device stays a step ahead
            self._last_loss = self._pending_loss.item()
            if not self._last_loss <= LOSS_LIMIT:
                self._fail(f"training diverged: loss is {self._last_loss} at step {self.step - 1}")
        self._pending_loss = loss.detach().float()
        now = time.perf_counter()
        if self._clock_start is None:
            if self.step == 1:
                devices.synchronize(self.device)
                self._milestones["first step done"] = time.time() - self._launched
            if self.step >= self.preset.untimed_steps:
                devices.synchronize(self.device)
                self._clock_start = self._last_log = time.perf_counter()
                self._untimed_batches = self._batches_used()
                self._milestones["clock started"] = time.time() - self._launched
                print(
                    f"clock started after {self.step} untimed steps ("
                    + ", ".join(f"{k} {v:.1f}s" for k, v in self._milestones.items())
                    + f" after launch); budget {self.budget_seconds:g}s",
                    flush=True,
                )
        else:
            self._step_seconds.append(now - self._last_step_time)
            if now - self._last_log >= (10 if self.device.type == "cuda" else 5):
                self._last_log = now
                self._log_progress()
        self._last_step_time = now

    def finish(self, model: torch.nn.Module, flops_per_token: float | None = None) -> Result:
        """Stop the clock, evaluate `model` (its forward must return logits), write and print the result."""
        devices.synchronize(self.device)
        if self._clock_start is not None:
            self._clock_stop = time.perf_counter()
        training_seconds = self.elapsed
        if self._pending_loss is not None and not self._pending_loss.item() <= LOSS_LIMIT:
            self._fail(f"training diverged: loss is {self._pending_loss.item()} at step {self.step}")
        self._flops_per_token = flops_per_token
        reason = self._rule_broken(training_seconds)
        eval_started = time.perf_counter()
        bpb = None
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        try:
            scorer = Scorer(model, self.vocab_size, self.device)
            batch_size = self._eval_batch_size()
            score = score_rows(scorer, self._val_rows, self._token_bytes(), batch_size)
            bpb = score.bpb
            scored = time.perf_counter()
            reason = reason or causality_violation(scorer, self._val_rows[:batch_size], score.first_batch)
            print(
                f"evaluation: {len(self._val_rows) * self.seq_len:,} tokens in {scored - eval_started:.1f}s, "
                f"causality probe {time.perf_counter() - scored:.1f}s",
                flush=True,
            )
        except torch.OutOfMemoryError:
            reason = "out of memory during evaluation, even one row at a time"
        except (NonFiniteLogits, ValueError) as exc:
            reason = str(exc)
        finally:
            if was_training:
                model.train()
        result = self._result(bpb, reason, training_seconds, time.perf_counter() - eval_started, model)
        result.save(result_path())
        print(result.summary(), flush=True)
        return result

    # -- internals ------------------------------------------------------------------------------

    def _batches_used(self) -> int:
        if self.batches is None:
            return 0
        return self.batches.tokens_served // (self.batches.batch_size * self.seq_len)

    def _rule_broken(self, training_seconds: float) -> str | None:
        if not self._train_check.ok():
            return f"a train shard is corrupt ({self._train_check.problem}); {REPAIR_HINT}"
        # The clock is checked between steps, so a run may end up to about one step past the budget; a
        # typical (median) step, not the longest: one long last step is exactly how to overrun it.
        typical_step = statistics.median(self._step_seconds) if self._step_seconds else 0.0
        if training_seconds > self.budget_seconds + 2 * typical_step + 1:
            return f"trained {training_seconds:.1f}s, past the {self.budget_seconds:g}s budget"
        timed_steps = self.step - self.preset.untimed_steps
        if timed_steps > 0:
            per_step = max(1.0, (self._batches_used() - self._untimed_batches) / timed_steps)
            if self._untimed_batches > 2 * per_step * self.preset.untimed_steps:
                return f"{self._untimed_batches} batches were trained on before the clock started"
        return None

    def _eval_batch_size(self) -> int:
        cap = max(1, EVAL_LOGITS_ELEMENTS // (self.seq_len * self.vocab_size))
        train = self.batches.batch_size if self.batches is not None else cap
        return batch_size_for(len(self._val_rows), min(cap, train))

    def _token_bytes(self) -> torch.Tensor:
        return torch.from_numpy(self.tokenizer.token_bytes().astype(np.int64)).to(self.device)

    def _throughput(self) -> float:
        timed = self._batches_used() - self._untimed_batches
        seconds = self.elapsed
        return timed * self.batches.batch_size * self.seq_len / seconds if self.batches and seconds > 0 else 0.0

    def _mfu(self, tokens_per_second: float) -> float | None:
        peak = devices.peak_flops(self.device)
        if not peak or not self._flops_per_token:
            return None
        return 100 * self._flops_per_token * tokens_per_second / peak

    def _log_progress(self) -> None:
        tps = self._throughput()
        mfu = self._mfu(tps)
        print(
            f"step {self.step:5d} | {100 * self.progress:5.1f}% | loss {self._last_loss:.4f} | "
            f"{tps / 1e3:,.1f}k tok/s"
            + (f" | mfu {mfu:.1f}%" if mfu is not None else "")
            + f" | {max(0.0, self.budget_seconds - self.elapsed):.0f}s left",
            flush=True,
        )

    def _fail(self, reason: str) -> None:
        result = self._result(None, reason, self.elapsed, 0.0, None)
        result.save(result_path())
        print(result.summary(), flush=True)
        raise TrainingFailed(reason)

    def _result(
        self, bpb: float | None, reason: str | None, training_seconds: float, eval_seconds: float, model
    ) -> Result:
        tps = self._throughput()
        total = time.time() - psutil.Process().create_time()
        params = sum(p.numel() for p in model.parameters()) if model is not None else 0
        return Result(
            val_bpb=bpb,
            valid=reason is None and bpb is not None,
            invalid_reason=reason,
            training_seconds=round(training_seconds, 3),
            total_seconds=round(total, 3),
            untimed_seconds=round(total - training_seconds - eval_seconds, 3),
            eval_seconds=round(eval_seconds, 3),
            peak_memory_mb=round(devices.peak_memory_mb(self.device), 1),
            mfu_percent=None if (m := self._mfu(tps)) is None else round(m, 2),
            tokens_per_second=round(tps, 1),
            total_tokens_M=round(self.batches.tokens_served / 1e6, 3) if self.batches else 0.0,
            num_steps=self.step,
            num_params_M=round(params / 1e6, 3),
            epochs=self.batches.epoch if self.batches else 0,
            device=devices.describe(self.device),
            preset=self.preset.name,
            dataset=self.apparatus.dataset,
            budget_seconds=self.budget_seconds,
            harness_fingerprint=self.fingerprint,
            run_id=os.environ.get(RUN_ID_ENV),
        )


class _BackgroundVerify:
    """Hashes the train shards on a thread while training runs (hashlib releases the GIL)."""

    def __init__(self, data_dir: Path, manifest: Manifest):
        self.problem: str | None = None
        self._thread = threading.Thread(target=self._check, args=(data_dir, manifest), daemon=True)
        self._thread.start()

    def _check(self, data_dir: Path, manifest: Manifest) -> None:
        for info in manifest.split(TRAIN):
            path = data_dir / f"{info.name}.bin"
            try:
                if file_sha256(path) != info.sha256:
                    self.problem = f"{path} does not match its SHA-256"
                    return
            except OSError as exc:
                self.problem = str(exc)
                return

    def ok(self) -> bool:
        self._thread.join()
        return self.problem is None
