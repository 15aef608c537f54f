"""The live terminal view shows what runs, its training time against the budget, and the best so far."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from autoresearch.loop.experiment import Experiment
from autoresearch.loop.live import LiveReporter
from autoresearch.loop.reporter import PlainReporter, console_echo


def kept(id: int, bpb: float, description: str, status: str = "keep") -> Experiment:
    return Experiment(id=id, kind="experiment", status=status, description=description, parent="a", val_bpb=bpb)


def screen(view: LiveReporter) -> str:
    console = Console(record=True, width=160, force_terminal=True)
    console.print(view._render())
    return console.export_text()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_live_view_shows_the_experiment_the_best_and_the_verdicts():
    console = Console(record=True, width=140, force_terminal=True)
    view = LiveReporter(console, "autoresearch: tune")
    best = kept(2, 1.2345, "LR up")
    view.finished(best, best)
    view.phase(3, "tune: LR 0.05 -> 0.1", "training run 1")
    view.training(3, 0, 60)
    console.print(view._render())
    text = console.export_text()
    assert "exp 2 KEEP val_bpb 1.234500" in text  # the verdict line
    assert "exp 3: training run 1" in text and "60s budget" in text and "tune: LR 0.05 -> 0.1" in text
    assert "best val_bpb 1.234500 (exp 2)" in text and "1 keep" in text


def test_the_clock_counts_training_only_not_start_up_or_evaluation(tmp_path: Path):
    clock = FakeClock()
    view = LiveReporter(Console(width=160), "autoresearch: tune", runs_dir=tmp_path, clock=clock)
    log = tmp_path / "3-0" / "log.txt"
    log.parent.mkdir()
    view.phase(3, "LR up", "training run 1")
    view.training(3, 0, 60)
    log.write_text("")  # the executor starts the run's log
    assert "starting up (not counted)" in screen(view)
    clock.now += 40  # importing and compiling: not on the clock
    log.write_text("model handed over: graph exported in 3.1s\ntrain data: 9 rows of 256 tokens\n")
    assert "starting up (not counted)" in screen(view)
    log.write_text(log.read_text() + "clock started after 5 untimed steps; budget 60s\n")
    assert "0:00 / 60s budget" in screen(view)
    clock.now += 12
    assert "0:12 / 60s budget" in screen(view)
    log.write_text(log.read_text() + "step   120 |  25.0% | loss 3.4100 | 45s left\n")  # 15 s trained
    text = screen(view)
    assert "0:15 / 60s budget (step 120, loss 3.4100)" in text
    clock.now += 100  # it never runs past the budget
    assert "1:00 / 60s budget" in screen(view)
    log.write_text(log.read_text() + "training done: 300 steps in 60.2s (after 5 untimed); handing the weights over\n")
    clock.now += 30  # evaluating: the clock stays where training ended
    assert "trained 1:00 / 60s budget; evaluating" in screen(view)


def test_a_log_left_by_an_earlier_attempt_is_not_read_as_the_new_run(tmp_path: Path):
    log = tmp_path / "3-0" / "log.txt"
    log.parent.mkdir()
    log.write_text("clock started after 5 untimed steps; budget 60s\ntraining done: 9 steps in 60.0s\n")
    view = LiveReporter(Console(width=160), "autoresearch: tune", runs_dir=tmp_path, clock=FakeClock())
    view.phase(3, "LR up", "training run 1")
    view.training(3, 0, 60)
    assert "starting up" in screen(view) and "evaluating" not in screen(view)


def test_descriptions_are_cut_at_a_word_and_brackets_are_not_markup():
    view = LiveReporter(Console(width=160), "autoresearch: tune")
    what = "[exp 9] tune: MATRIX_LR 0.04 -> 0.0927, EMBEDDING_LR 0.6 -> 0.3123, WARMUP_RATIO 0.0 -> 0.15, DEPTH 8"
    view.phase(4, what, "training run 1")
    text = screen(view)
    assert "[exp 9] tune: MATRIX_LR 0.04 -> 0.0927, EMBEDDING_LR 0.6 -> 0.3123…" in text  # 80 characters at most
    assert "WARMUP" not in text


def test_after_a_resume_the_view_shows_the_best_and_the_history():
    view = LiveReporter(Console(width=160), "autoresearch: tune")
    history = [kept(1, 1.1, "baseline"), kept(2, 1.2, "LR way up", "discard"), kept(3, 1.05, "warm-up")]
    history.append(Experiment(id=4, kind="experiment", status="running", description="in flight", parent="a"))
    view.resume(history)
    text = screen(view)
    assert "best val_bpb 1.050000 (exp 3)" in text and "warm-up" in text
    assert "2 keep, 1 discard, 0 crash" in text
    assert text.index("*3") < text.index("LR way up") < text.index("*1")  # the newest first


def test_plain_output_keeps_its_exp_prefix_on_a_rich_console():
    console = Console(record=True, width=160)
    plain = PlainReporter(console_echo(console))
    plain.phase(3, "tune: LR [0.05] -> 0.1", "training run 1")
    plain.training(3, 0, 60)
    plain.message("[bold]not markup[/bold]")
    lines = console.export_text().splitlines()
    assert lines == [
        "[exp 3] training run 1: tune: LR [0.05] -> 0.1",
        "[exp 3] training run 1 (60s budget, after start-up, which is not counted)",
        "[bold]not markup[/bold]",
    ]


def test_plain_output_to_a_log_is_one_line_per_event_however_long():
    """Piped to a file, a console is 80 columns wide: a verdict wrapped over three lines breaks `grep 'exp 7 '`."""
    console = Console(record=True, width=80)
    plain = PlainReporter(console_echo(console))
    exp = kept(7, 2.9, "tune: EMBEDDING_LR 0.8 -> 1.81", status="discard")
    exp.reason = "not better by more than the noise: 2.936287 vs best 2.842110 (+0.094177; margin 0.079820)"
    plain.finished(exp, kept(1, 2.842110, "baseline"))
    plain.phase(7, "tune: " + "a long description " * 6, "training run 1")
    lines = console.export_text().splitlines()
    assert len(lines) == 2 and lines[0].startswith("exp 7 DISCARD") and lines[0].endswith("margin 0.079820)")


def test_with_two_workers_each_has_a_line_its_run_against_the_budget_its_busy_fraction_and_rate(tmp_path: Path):
    clock = FakeClock()
    view = LiveReporter(Console(width=160), "autoresearch: tune", runs_dir=tmp_path, clock=clock)
    view.phase(2, "LR up", "training run 1 on gpu 0")
    view.training(2, 0, 60, "gpu 0")
    view.phase(3, "BATCH 64", "training run 1 on gpu 1")
    view.training(3, 0, 60, "gpu 1")
    clock.now += 30
    view.run_ended(3, 0, "gpu 1")
    done = Experiment(id=3, kind="experiment", status="discard", description="BATCH 64", parent="a", worker="gpu 1")
    view.finished(done, None)
    clock.now += 30  # a minute up: gpu 0 trained all of it, gpu 1 half
    log = tmp_path / "2-0" / "log.txt"
    log.parent.mkdir()
    log.write_text("clock started after 5 untimed steps; budget 60s\nstep   120 |  25.0% | loss 3.4100 | 45s left\n")
    lines = screen(view).splitlines()
    gpu0 = next(line for line in lines if line.startswith("gpu 0"))
    assert "exp 2 run 1: 0:15 / 60s budget (step 120, loss 3.4100)" in gpu0 and "LR up" in gpu0
    assert "busy 100%, 0.0/h" in gpu0
    gpu1 = next(line for line in lines if line.startswith("gpu 1"))
    assert "idle" in gpu1 and "busy 50%, 60.0/h" in gpu1  # one verdict in a minute
    assert any(line.startswith("2 workers") and "busy 75%, 60.0 experiments/h" in line for line in lines)
    assert not any("training run 1 on gpu" in line for line in lines)  # each run on its worker's line only


def test_one_worker_has_no_worker_lines():
    view = LiveReporter(Console(width=160), "autoresearch: tune", clock=FakeClock())
    view.phase(2, "LR up", "training run 1")
    view.training(2, 0, 60)
    text = screen(view)
    assert "exp 2: training run 1  60s budget" in text and "busy" not in text and "idle" not in text
