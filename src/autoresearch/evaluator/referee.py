"""One training run, refereed: `python -m autoresearch.evaluator.referee`.

This is the trusted process of a run. It starts the experiment (train.py, confined), serves it the
training data, owns its clock, takes the model it hands over, kills it and everything it started,
and only then scores the model, from the exported graph and weights, without running a line of
train.py. The validation rows, the result's path and this process's memory are out of the
experiment's reach.

The rules of the clock are in evaluator/session.py.

Started by the loop's executor with `--workspace DIR`: the experiment starts at once, so its imports
overlap the previous run, and the job (one JSON line on stdin: {"source", "log", "result", "key"}: train.py's
text itself, which no file read later could replace, and the key that seals the result) comes when the run
may begin. Started with `--train-py PATH` it runs that file now, the output on this terminal: what
`python train.py` becomes.
Exit status: 0 scored (the result says whether it is valid), 3 the experiment crashed or broke the
protocol (the result says why), 2 cannot run at all, 4 the disk is full (a write of this process's failed for lack
of space, or the experiment crashed with its disk full), not by the run's own files: no result, and the loop stops.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from autoresearch import device as devices
from autoresearch.config.apparatus import CONFIG_NAME, Apparatus, prepare_again_hint
from autoresearch.config.presets import get_preset
from autoresearch.data.shards import REPAIR_HINT, Manifest, evaluation_rows, open_shard
from autoresearch.data.sources import VAL
from autoresearch.data.tokenizer import Tokenizer
from autoresearch.errors import AutoresearchError, ConfigError, DataError
from autoresearch.evaluator import ahead, compile_cache, cores, memory, run_group, run_user, sandbox, tasks
from autoresearch.evaluator.clock import CPU, CpuClock, TrainingClock, WallClock
from autoresearch.evaluator.clock import describe as describe_clock
from autoresearch.evaluator.confined import ExperimentProcess
from autoresearch.evaluator.cores import run_cores
from autoresearch.evaluator.feeder import Feeder
from autoresearch.evaluator.fingerprint import fingerprint
from autoresearch.evaluator.hidden import data_places
from autoresearch.evaluator.program import ProgramRejected, load_program
from autoresearch.evaluator.result import EVALUATING, PROGRESS_NAME, RESULT_ENV, STARTING, Result
from autoresearch.evaluator.run_group import RunGroup
from autoresearch.evaluator.score import NonFiniteLogits, eval_batch_size, score_program
from autoresearch.evaluator.session import Session, Timeline
from autoresearch.files import disk_use, remove_tree
from autoresearch.orphans import owned_box, remove_box
from autoresearch.workspace.disk import is_disk_full, nearly_full

CRASHED = 3
DISK_FULL = 4
# What a run may leave on the real disk, in its box and in what it compiled, before a full disk is taken for its own
# doing (a crash of its own) rather than the machine's (the loop stops, and trains it again once there is room): as
# much as the loop keeps of what a run compiled, far more than an honest run writes (~60 MB a model shape).
OWN_FILES_CAP = compile_cache.MAX_STAGED_BYTES
ENDING_S = 2.0  # how long a train.py whose channel closed is given to end by itself: its own exit code is news


class Referee:
    def __init__(self, train_py: Path, env: dict[str, str], own_group: RunGroup | None = None):
        self.root = train_py.parent
        self.own_group = own_group  # this process's memory group (`_hold_the_share`), where it has one
        if not (self.root / CONFIG_NAME).is_file():
            raise ConfigError(
                f"no {CONFIG_NAME} in {self.root}",
                hint="make a workspace with `autoresearch init DIR` and run train.py inside it",
            )
        self.apparatus = Apparatus.load(self.root / CONFIG_NAME)
        self.preset = get_preset(self.apparatus.preset)
        data_dir = Path(self.apparatus.data_dir)
        try:
            manifest = Manifest.load(data_dir / "manifest.json")
        except FileNotFoundError:
            raise DataError(
                f"no prepared data in {data_dir}",
                hint=prepare_again_hint(self.apparatus),
            ) from None
        if manifest.preset != self.preset.as_dict():
            raise DataError(f"data in {data_dir} was prepared for other preset settings", hint=REPAIR_HINT)
        # The experiment first: it may be forked from this process, which must not hold anything secret yet.
        self.experiment, clock = self._start_experiment(env, data_dir, manifest)
        try:
            devices.check_available()  # a device it cannot have: said here, once the experiment is forked
            self.tokenizer = Tokenizer.load(data_dir / "tokenizer.json")
            if self.tokenizer.digest() != manifest.tokenizer_sha256:
                raise DataError(f"{data_dir / 'tokenizer.json'} does not match the shards", hint=REPAIR_HINT)
            self.fingerprint = fingerprint(self.apparatus, manifest)
            self.feeder = Feeder(data_dir, manifest, self.tokenizer.vocab_size)
            val_rows = open_shard(data_dir, manifest.split(VAL)[0], verify=True)
            self._val_rows = evaluation_rows(val_rows, self.preset.eval_rows)
        except BaseException:
            self.experiment.stop()
            remove_box(self.box)
            raise
        self.eval_batch = eval_batch_size(len(self._val_rows), self.preset.seq_len, self.tokenizer.vocab_size)
        constants = {
            "seq_len": self.preset.seq_len,
            "eval_batch_rows": self.eval_batch,
            "vocab_size": self.tokenizer.vocab_size,
            "budget_seconds": self.apparatus.budget_seconds,
            "untimed_steps": self.preset.untimed_steps,
            "train_rows": self.feeder.order.num_rows,
        }
        self.session = Session(
            self.experiment.channel,
            self.feeder,
            constants,
            self.apparatus.budget_seconds,
            clock,
            self.experiment.task_limit,
        )
        self.timeline = self.session.timeline
        self._ahead: ahead.CompileAhead | None = None
        if self.experiment.confined and ahead.wanted(devices.pick_device()):  # (unconfined, `stop` kills its pool)
            self.session.on_clock = self._compile_ahead

    def _killed_for_memory(self) -> bool:
        """Whether the kernel killed a process of the run, or one of this process's, for the run's share."""
        return self.experiment.killed_for_memory() or (self.own_group is not None and memory.killed(self.own_group))

    def _compile_ahead(self, document: bytes) -> None:
        self._ahead = ahead.CompileAhead(document, devices.pick_device(), self.eval_batch, self.preset.seq_len)
        self._ahead.start()

    def _start_experiment(
        self, env: dict[str, str], data_dir: Path, manifest: Manifest
    ) -> tuple[ExperimentProcess, TrainingClock]:
        state = self.root / ".autoresearch"
        state.mkdir(exist_ok=True)
        self.box = owned_box(state, os.getpid())  # removed at the end of the run, or by the next start if killed
        env, layer = compile_cache.layer(env, self.box, confined=sandbox.evaluators_reason() is None)
        on_cpu = devices.pick_device().type == "cpu"
        if on_cpu:  # the experiment gets the cores this process's torch would use, within a CPU quota (cores.py)
            threads, counted = run_cores(torch.get_num_threads())
            env["OMP_NUM_THREADS"] = str(threads)
            torch.set_num_threads(threads)  # scoring, here, within the same cores
        shown = compile_cache.shown_dirs()
        hidden = [self.root.resolve(), *data_places(data_dir, manifest, os.environ)]
        view = sandbox.View(hidden=hidden, readable=shown, binds=layer, gpu=not on_cpu)  # no GPU on the CPU clock
        experiment = ExperimentProcess(self.box, env, view)
        return experiment, CpuClock(counted) if on_cpu else WallClock()

    # -- the run --------------------------------------------------------------------------------

    def run(
        self,
        train_py: bytes,
        log,
        result_path: Path,
        progress_path: Path | None = None,
        staged: Path | None = None,
        key: str | None = None,
    ) -> int:
        """Run `train_py` (its bytes) once, score what it hands over, write the result (sealed with `key`, if
        given: evaluator/result.py); the exit status. While it runs, where it is goes to `progress_path`, if given
        (Session.progress); what it compiled goes to `staged`, if given, for the loop to add to the shared compile
        cache or not (compile_cache.settle)."""
        try:
            self.experiment.output.attach(log)
            if not self.experiment.confined:
                self.experiment.output.note(
                    f"autoresearch: the experiment runs unconfined ({self.experiment.unconfined_reason}); the "
                    "metric is still computed here, but train.py can read and write what this user can"
                )
            if self.experiment.unfiltered_reason and self.session.clock.kind == CPU:
                self.experiment.output.note(
                    f"autoresearch: no seccomp filter for the experiment ({self.experiment.unfiltered_reason}); "
                    "a train.py that ignores SIGCHLD can do work that the CPU clock does not count"
                )
            (self.box / "train.py").write_bytes(train_py)
            compile_cache.fill(self.box)  # now, not when this process started: a run kept since then is in it
            if self.experiment.run_uid is not None:  # the folders `fill` made: the run writes what it compiles there
                run_user.give([self.box])
            self.session.progress_path = progress_path
            self.session.write_progress(STARTING)
            broken = self.session.serve()
            # Without a hand-over the channel closed: train.py ended, or closed it and goes on (then stopped).
            ended = not broken and self.timeline.weights_data is None and self.experiment.ends_by_itself(ENDING_S)
            code = self.experiment.stop()
            # Started by bubblewrap, and ended before train.py said a word: where bubblewrap now fails to make a sandbox
            # at all, so did this run's, before train.py ran. No fault of the run's: the loop stops.
            unheard = self.timeline.hello is None and self.experiment.confined and not self.experiment.forked
            if unheard and (why := sandbox.probe()) is not None:
                raise sandbox.SandboxUnavailable(why)
            if self.experiment.reached_task_cap():
                self.experiment.output.note(
                    f"autoresearch: the run was refused a new process or thread: it may have {self.experiment.tasks} "
                    f"tasks at once (processes and threads together; {tasks.TASKS_ENV}), within the machine's own "
                    "limits"
                )
            if self._killed_for_memory():
                self.experiment.output.note(
                    "autoresearch: the kernel killed a process of the run for its memory: the run may hold "
                    f"{memory.amount(self.experiment.memory)} ({memory.MEMORY_ENV}; unset, each worker's share of "
                    "this machine's, less a reserve for the loop and the system)"
                )
            if start_up := self.timeline.start_up():
                self.experiment.output.note(start_up)
            compiled = compile_cache.harvest(self.box, staged) if staged else ""
            self.session.write_progress(EVALUATING)
            if self.experiment.output.disk_full:  # its log lost lines: the run is not recorded without them
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "the run's log")
            result, crashed = self._judge(broken, code if ended else None)
            # A crash on a full disk (Inductor's cache writes failing in train.py, say) is the disk's, not train.py's.
            # Decided by what this process sees of the disk, never by what train.py printed.
            if crashed and nearly_full(result_path.parent):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(result_path.parent))
            result = dataclasses.replace(result, compiled=compiled)
            result.save(result_path, key)
            if progress_path:
                progress_path.unlink(missing_ok=True)
            self.experiment.output.note(result.summary())
            return CRASHED if crashed else 0
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            return self._out_of_space(result_path, key, staged)
        finally:
            self.experiment.stop()
            remove_box(self.box)

    def _out_of_space(self, result_path: Path, key: str | None, staged: Path | None) -> int:
        """The disk filled during the run. Where the run's own files (its box, what it compiled) take more than
        OWN_FILES_CAP, it filled the disk itself: they are deleted and it is a crash of its own, or a train.py could
        stop the loop at will. Else DISK_FULL: the loop stops, and trains the experiment again on its next start."""
        self.experiment.stop()
        own = disk_use(self.box) + (disk_use(staged) if staged else 0)  # a walk no depth or mode hides a file from
        if own <= OWN_FILES_CAP:
            print(f"error: the disk is full ({result_path.parent})", file=sys.stderr)
            return DISK_FULL
        remove_box(self.box)
        if staged:
            with contextlib.suppress(OSError):
                remove_tree(staged)
        why = f"the run filled the disk: its own files took more than {OWN_FILES_CAP / 2**30:g} GiB"
        try:
            self._result(None, why).save(result_path, key)
        except OSError as exc:  # still full: someone else's files too; the loop sees it (LocalExecutor.run)
            if is_disk_full(exc):
                return DISK_FULL
            raise
        return CRASHED

    # -- the verdict ----------------------------------------------------------------------------

    def _judge(self, broken: str | None, exit_code: int | None) -> tuple[Result, bool]:
        """The result of the run, and whether the experiment crashed (rather than scored, or not); `exit_code`
        is train.py's where it ended by itself without handing a model over."""
        t = self.timeline
        if broken:
            return self._result(None, f"the experiment broke the protocol: {broken}"), True
        if self._killed_for_memory():  # it trained, if at all, with its memory taken back and thrashing
            limit = memory.amount(self.experiment.memory)
            return self._result(None, f"the kernel killed a process of the run for its memory (at most {limit})"), True
        if t.program_error:
            return self._result(None, t.program_error), False
        if t.weights_data is None:
            why = _no_hand_over(t, exit_code)
            if last := self.experiment.output.last_line():  # quoted: text from train.py is no instruction
                why += f"; the last line it printed (untrusted): {json.dumps(last[:300])}"
            return self._result(None, why), True
        if t.clock is None:
            why = "the clock never started: training before it gains nothing, and there was no training after it"
            return self._result(None, why), False
        if why := self.session.late():
            return dataclasses.replace(self._result(None, why), late=True), False
        if why := self.feeder.problem():
            return self._result(None, why), False
        started = time.monotonic()
        try:
            bpb, why = self._score()
            tokens = len(self._val_rows) * self.preset.seq_len
            self.experiment.output.note(f"evaluation: {tokens:,} tokens in {time.monotonic() - started:.1f}s")
        except torch.OutOfMemoryError:
            bpb, why = None, f"out of memory during evaluation, at {self.eval_batch} rows per batch"
        except (ProgramRejected, NonFiniteLogits) as exc:
            bpb, why = None, str(exc)
        except Exception as exc:  # the graph is the experiment's: whatever it raises is its failure, not ours
            # Only the kind of error: its text could carry what the graph read out of this process.
            bpb, why = None, f"the handed-over model failed in evaluation ({type(exc).__name__})"
        return self._result(bpb, why, time.monotonic() - started), False

    def _score(self) -> tuple[float, str | None]:
        t = self.timeline
        compiled = self._ahead.take(t.weights_data or b"") if self._ahead else None
        if self._ahead and self._ahead.is_alive():
            self.experiment.output.note(f"the graph compiled ahead was not ready {ahead.WAIT_S:.0f}s after training")
        if compiled is None:
            program = load_program(t.program or b"", t.weights_data or b"", devices.pick_device())
        else:
            program = compiled.program
        bpb, why, eager_because = score_program(program, self._val_rows, self.tokenizer, self.eval_batch, compiled)
        if eager_because:
            self.experiment.output.note(
                f"evaluation ran the graph eagerly: Inductor could not compile it ({eager_because})"
            )
        return bpb, why

    def _result(self, bpb: float | None, reason: str | None, eval_seconds: float = 0.0) -> Result:
        t = self.timeline
        end = t.stop or time.monotonic()
        trained = self.session.elapsed()
        tokens = t.timed_rows * self.preset.seq_len
        tps = tokens / trained if trained > 0 else 0.0
        device = devices.pick_device()
        peak = devices.peak_flops(device)
        flops = t.reported.get("flops_per_token")
        mfu = 100 * flops * tps / peak if peak and flops is not None and flops > 0 else None
        peak_mb = t.reported.get("peak_memory_mb")
        clock = describe_clock(self.session.clock)
        return Result(
            val_bpb=bpb,
            valid=reason is None and bpb is not None,
            invalid_reason=reason,
            training_seconds=round(trained, 3),
            total_seconds=round(end - t.go + eval_seconds, 3),
            untimed_seconds=round((t.clock or end) - t.go, 3),
            eval_seconds=round(eval_seconds, 3),
            peak_memory_mb=round(peak_mb, 1) if peak_mb is not None else 0.0,
            mfu_percent=None if mfu is None or not math.isfinite(mfu) else round(mfu, 2),
            tokens_per_second=round(tps, 1),
            total_tokens_M=round(tokens / 1e6, 3),
            num_steps=len(t.steps),
            num_params_M=round(_parameter_count(t.weights_data) / 1e6, 3),
            epochs=self.feeder.order.epoch,
            device=devices.describe(device),
            preset=self.preset.name,
            dataset=self.apparatus.dataset,
            budget_seconds=self.apparatus.budget_seconds,
            harness_fingerprint=self.fingerprint,
            confined=self.experiment.confined,
            training_clock=clock,
            setup=f"{devices.model(device)}; {clock}",
            torch=torch.__version__,
        )


def _no_hand_over(t: Timeline, exit_code: int | None) -> str:
    """Why there is no model, for the ledger's reason; `exit_code` None: train.py was stopped (it had closed its
    channel and gone on)."""
    if exit_code is None:
        ended = "train.py ended"
    elif exit_code >= 0:
        ended = f"train.py ended (exit code {exit_code})"
    else:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:
            name = f"signal {-exit_code}"
        why = " (the out-of-memory killer sends it when the machine runs out of memory)" if name == "SIGKILL" else ""
        ended = f"train.py was killed by {name}{why}"
    if t.program is None:
        return f"{ended} without handing a model over"
    if t.stop is None:
        return f"{ended} before run.finish()"
    return f"{ended} before its weights were handed over"


def _parameter_count(weights: bytes | None) -> int:
    """How many numbers the handed-over weights hold; 0 where they cannot be read (they are the experiment's: the
    error safetensors raised ended the evaluator, which then stopped the loop; red team)."""
    if not weights:
        return 0
    from safetensors.torch import load

    try:
        return sum(t.numel() for t in load(weights).values())
    except Exception:
        return 0


# -- the process --------------------------------------------------------------------------------


def _hold_the_share() -> RunGroup | None:
    """Put this process, and so the run it starts, in a memory group of the run's share (evaluator/memory.py): what
    the experiment sends is read here, and the graph it hands over builds and runs here, so a train.py could have
    this process hold memory for it, beyond its share (a graph that allocated 1.5 GiB as it was scored; a graph
    document that parsed to 25 times its size; red team). The run's own group lies inside, of the same share."""
    share = memory.run_memory()
    os.environ[memory.MEMORY_ENV] = str(share)  # the run's, not a share of what is left in this group
    limits = memory.limits(share, as_one=False)  # the run first, and the evaluator lives to say why
    group = RunGroup.make(limits, holds=frozenset(sandbox.run_limits()))  # the run's group's, inside
    run_group.check(group, limits)  # where the loop made such a group, never an evaluator holding any memory
    if group is not None:
        try:
            group.enter()
        except OSError as exc:  # as the loop's probe could (run_group.limitable): not the run's doing
            group.remove(wait=0)
            raise AutoresearchError(
                f"cannot enter this run's memory group ({exc.strerror}): {', '.join(map(str, group.folders))}",
                hint=f"the loop's probe could at its start; run again, or set {memory.MEMORY_ENV}=0 to hold no group",
            ) from None
    return group


def _stop_with_the_loop(referee: Referee) -> None:
    """The loop keeps this process's stdin open while the run goes on: its end is the loop's (killed, or a Ray
    worker lost with its node). Then nobody waits for the result: stop the experiment and everything it
    started, and go, so that no run goes on training on a GPU that the next one is given."""
    sys.stdin.read()
    referee.experiment.stop()
    remove_box(referee.box)
    os._exit(CRASHED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autoresearch.evaluator.referee")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--workspace", type=Path, help="prepare a run of this workspace, then read the job on stdin")
    where.add_argument("--train-py", type=Path, help="run and score this train.py now (python train.py by hand)")
    args = parser.parse_args(argv)
    try:
        cores.pin()  # on its worker's CPUs (several workers on one machine), the experiment it starts with it
        own_group = _hold_the_share()
    except AutoresearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _serve(args, own_group)
    except AutoresearchError as exc:  # set up for the run, but it could not be trained (its sandbox not made)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write of this process's own, before or after a run (its box, the caches' folders)
        if not is_disk_full(exc):
            raise
        print(f"error: the disk is full: {exc}", file=sys.stderr)
        return DISK_FULL
    finally:  # by hand: no loop removes the group once this process has ended
        if args.train_py and own_group is not None:
            own_group.leave()


def _serve(args: argparse.Namespace, own_group: RunGroup | None) -> int:
    # What a process that exec'd this one may have left: ignoring SIGCHLD would hide the experiment's ended
    # processes from the CPU clock and from waiting for them.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    experiment_env = dict(os.environ)
    # This process compiles the handed-over graph with caches of its own (compile_cache.evaluator_caches): what an
    # experiment compiled can reach the experiments' shared cache, and must never be loaded here.
    compile_cache.evaluator_caches(os.environ)
    try:
        compile_cache.in_use()  # held until this process ends; trims the caches where no other evaluator runs
        train_py = (args.train_py or args.workspace / "train.py").resolve()
        referee = Referee(train_py, experiment_env, own_group)
    except AutoresearchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if devices.pick_device().type == "cuda":
        # Scoring compiles the graph: import the compiler now, while the experiment starts (6-7 s).
        import torch._dynamo
        import torch._inductor.compile_fx  # noqa: F401
    if args.train_py:
        return referee.run(train_py.read_bytes(), sys.stdout.buffer, Path(os.environ.get(RESULT_ENV, "result.json")))
    line = sys.stdin.readline()
    if not line:  # the loop stopped before this run was needed
        referee.experiment.stop()
        remove_box(referee.box)
        return 0
    job = json.loads(line)
    threading.Thread(target=_stop_with_the_loop, args=(referee,), daemon=True, name="loop-watch").start()
    with open(job["log"], "ab") as log:
        result = Path(job["result"])
        return referee.run(
            job["source"].encode("utf-8", errors="surrogateescape"),
            log,
            result,
            result.with_name(PROGRESS_NAME),
            result.with_name(compile_cache.STAGED),
            job.get("key"),
        )


if __name__ == "__main__":
    sys.exit(main())
