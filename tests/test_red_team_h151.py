"""Red team (helper 151): the fresh changes of stop 78's list and helper 150's. Each test marked BROKE failed before
its fix.

- BROKE: a train.py a turn left as a link is read where it leads into the workspace or a folder the agent may write
  (helper 150), but a place hidden from the agent may lie there too: a hub cache, prepared data or a corpus placed in
  the workspace (HF_HUB_CACHE=./hub). A link to a file there had the loop read it for the agent, and the row's reason
  quote its first line. A link that leads into a hidden place is not followed now either.
- BROKE: a train.py left as a link in a loop of links (`ln -sf a train.py; ln -s train.py a`) stopped the loop with a
  traceback (Path.resolve's RuntimeError, in helper 150's check): any agent with a shell could end the night at will.
  It is a rejected proposal now.
- BROKE: a loop.json or sessions.jsonl with a number out of range (a pid of 1e999 or 10**30, a start of 10**400:
  written by hand, or a coding agent that drives the loop) raised OverflowError out of `status`, `report`, `submit`'s
  new share check, the report a step's watch writes again, and every loop's start (start_session): a traceback, and
  no loop would start until the file was found. A pid of 0 or -1 was a loop running for ever (os.kill asks of the
  group, or of every process). Such a record is no loop now.
- BROKE: `in_order` took a label's `²` for a number (`isdigit`), and int() refused it: `status` and `report` stopped
  on a worker labelled `cpu 1²` (a ledger written by hand), or one of 5,000 digits (int()'s limit of 4,300). Decimal
  digits alone are numbers now, and their first 18.
- BROKE: the live view of many workers fits the terminal's height only where each worker's line fits its width: at 80
  columns (a terminal's default) each wrapped in two or three, and 64 workers' view took 75 lines of 30, the totals
  and the verdicts cut off again. Each line is cut with an ellipsis now.
- BROKE: a folder all a person's (`-all-yours`, helper 150) is never emptied, but it was counted toward the
  quarantine's bound: a person's gigabytes made beside a confined run (a venv, a checkpoint in the workspace while
  `try` trained) had every later step empty every other folder at once (the evidence of what each turn left), and
  walk all the person's files again. It is not counted now, as their files in the workspace are not.
- BROKE: a coding agent's last message with half an emoji (Claude Code's JSON, `\\ud83d`: a JavaScript string cut
  within a surrogate pair; or any agent that means it) is quoted in the row's reason when its turn is rejected (train.py
  unchanged, an exit status), and SQLite cannot encode a lone surrogate: UnicodeEncodeError, and the loop stopped
  with a traceback, for an honest agent as for a hostile one. What an agent said is quoted with a `?` for it now.
- BROKE: `submit --gpus all` to a loop running on GPUs 0 and 1 of a machine of four was taken as the loop's own
  options (`_same` read `all` given as the loop's GPUs): no note, and the submission trained on two GPUs of the four
  asked. `all` given is the machine's GPUs now (as `--gpus all` starts a loop on); the loop's `all`, its workers'.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from loop_support import agent_channel
from test_agent_turn import take_turn

from autoresearch.loop.ledger import Ledger
from autoresearch.vocabulary import Status

SECRET = "Bob's validation text, which no agent may read"


@pytest.mark.slow  # seconds: an agent's turn with a shell, in its namespace
def test_a_train_py_linked_to_a_hidden_file_inside_the_workspace_is_not_read_for_it(workspace, tmp_path, monkeypatch):
    """BROKE: the hub's cache placed in the workspace is hidden from the turn, but helper 150's check followed a link
    to a file there (it lies in the workspace), and the row's reason quoted the file's first line."""
    hub = workspace.root / "hub"  # the hub's cache, placed in the workspace: hidden from every turn all the same
    hub.mkdir()
    (hub / "val.txt").write_text(f"{SECRET}\n")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    seen = agent_channel(workspace) / "seen"
    exp, _ = take_turn(
        workspace, tmp_path, f"(cat hub/val.txt || true) > {seen} 2>&1\nln -sf hub/val.txt train.py\necho read it"
    )
    assert SECRET not in seen.read_text()  # hidden from the turn itself
    rows = " ".join(f"{e.reason} {e.diff or ''}" for e in Ledger(workspace.root).all())
    assert SECRET not in rows, exp.reason
    assert exp.status == Status.CRASH and "train.py" in exp.reason, exp.reason


@pytest.mark.parametrize(
    "record",
    [
        '{"pid": 1e999, "started": 1.0, "workers": ["cpu 0"]}',
        '{"pid": 1%s, "started": 1.0, "workers": ["cpu 0"]}' % ("0" * 30),
        '{"pid": 5, "started": 1%s, "workers": ["cpu 0"]}' % ("0" * 400),
        '{"pid": 0, "started": 1.0, "workers": ["cpu 0"]}',
        '{"pid": -1, "started": 1.0, "workers": ["cpu 0"]}',
    ],
)
def test_a_session_record_of_numbers_out_of_range_is_no_loop(tmp_path, record):
    """BROKE: OverflowError out of read_session, periods and start_session (so out of `status`, `report`, `submit`
    and every loop's start) for a record written by hand; a pid of 0 or -1 was a loop that runs for ever."""
    from autoresearch.loop import activity

    (tmp_path / activity.SESSION_NAME).write_text(record)
    (tmp_path / activity.HISTORY_NAME).write_text(record.replace('"pid"', '"ended": null, "x"') + "\n")
    assert activity.read_session(tmp_path) is None
    assert [p.start for p in activity.periods(tmp_path, [])] in ([], [1.0])  # the history's line of a start of 1.0
    activity.start_session(tmp_path, ["cpu 0"], 2000.0)
    activity.end_session(tmp_path)
    assert [p.start for p in activity.periods(tmp_path, [])][-1] == 2000.0


def test_workers_labelled_with_digits_that_are_no_decimal_ones_are_listed():
    """BROKE: int('²') raised out of in_order, so out of `status` and `report`; so did int() of 5,000 digits."""
    from autoresearch.loop.activity import rated
    from autoresearch.loop.experiment import Experiment

    labels = ["cpu 1²", "cpu ①", "²", "cpu 10", "cpu ٢", "ray " + "9" * 5000]  # '²'.isdigit(); int('²') refused
    done = [
        Experiment(
            id=n,
            kind="experiment",
            status="discard",
            description="x",
            parent="a",
            val_bpb=2.0,
            worker=label,
            started_at=100.0 + n,
            finished_at=200.0 + n,
        )
        for n, label in enumerate(labels, start=1)
    ]
    assert rated(done).workers == [
        "cpu 1²",
        "cpu ٢",
        "cpu 10",
        "cpu ①",
        "ray " + "9" * 5000,
        "²",
    ]  # ٢: an Arabic-Indic 2, a decimal digit


@pytest.mark.slow  # seconds: an agent's turn with a shell
def test_a_train_py_left_a_link_in_a_loop_is_a_rejected_proposal(workspace, tmp_path):
    """BROKE: Path.resolve raised RuntimeError ("Symlink loop") out of the turn's check, and the loop stopped."""
    exp, _ = take_turn(workspace, tmp_path, "ln -sf loop.py train.py\nln -s train.py loop.py\necho looped")
    assert exp.status == Status.CRASH and "a loop of links" in exp.reason, exp.reason


def test_the_live_view_of_many_workers_fits_a_terminal_of_80_columns(tmp_path):
    """BROKE: at 80 columns each worker's line wrapped, and the view of 64 workers took 75 lines of 30: the totals and
    the verdicts were cut, as before stop 78's change."""
    from rich.console import Console

    from autoresearch.loop.experiment import Experiment
    from autoresearch.loop.live import LiveReporter

    console = Console(width=80, height=30, force_terminal=True, record=True)
    view = LiveReporter(console, "autoresearch: tune", runs_dir=tmp_path, clock=lambda: 1000.0)
    view.show_workers([f"cpu {n}" for n in range(64)])
    for n in range(40):
        view.phase(n, f"try a smaller learning rate with a longer warmup, number {n}", "training")
        view.training(n, 0, 60, f"cpu {n}")
    view.finished(
        Experiment(id=1, kind="baseline", status="keep", description="baseline " * 12, parent="", val_bpb=2.0), None
    )
    console.export_text()  # the verdict's own line, printed above the view
    console.print(view._render())
    lines = console.export_text().splitlines()
    assert len(lines) == 29, len(lines)  # the screen's, less the line the cursor is on
    assert [line.split()[:2] for line in lines if line.startswith("cpu ")][:3] == [
        ["cpu", "0"],
        ["cpu", "1"],
        ["cpu", "2"],
    ]
    assert any(line.startswith("64 workers") for line in lines) and "baseline" in lines[-1]


def test_a_persons_folder_past_the_quarantines_bound_does_not_have_every_other_emptied(tmp_path):
    """BROKE: the person's folder, never emptied, was counted, so every step emptied every other folder at once."""
    from autoresearch.workspace import quarantine

    def folder(name: str, size: int) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_bytes(b"x" * size)
        return tmp_path / name

    folder(f"20261207-010000-aaa{quarantine.ALL_YOURS}", 400_000)  # the person's venv, made beside a confined run
    litter = folder("20261207-020000-bbb", 8_000)  # what an agent's turn left
    newest = folder("20261207-030000-ccc", 8_000)
    assert quarantine.prune(tmp_path, newest, 100_000) == []
    assert (litter / "file").is_file()


@pytest.mark.slow  # seconds: a coding agent's turn with a shell
def test_a_coding_agents_message_of_half_an_emoji_is_recorded_and_the_loop_goes_on(workspace, tmp_path, monkeypatch):
    """BROKE: the reason quoted the agent's message, `\\ud83d` decoded from its JSON to a lone surrogate, which SQLite
    cannot encode: UnicodeEncodeError out of the ledger's write, and the loop stopped."""
    import json
    import os

    from agent_support import turn_through_the_loop

    from autoresearch.agents.coding_agent import CodingAgent
    from autoresearch.agents.recipes import recipe

    folder = tmp_path / "bin"
    folder.mkdir()
    # Half of 🚀: a JavaScript string cut in the middle of a pair, which JSON.stringify writes as `\ud83d`
    report = {"type": "result", "is_error": False, "result": "I tried a warmup \ud83d", "total_cost_usd": 0}
    (folder / "claude").write_text(f"#!/bin/sh\ncat >/dev/null\necho '{json.dumps(report)}'\n")
    (folder / "claude").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    exp, _ = turn_through_the_loop(workspace, CodingAgent(recipe("claude-code"), timeout_s=60))
    assert exp.status == Status.CRASH and "I tried a warmup" in exp.reason, exp.reason


def test_submit_with_gpus_all_to_a_loop_on_some_of_them_is_told_it_was_not_taken(monkeypatch):
    """BROKE: `--gpus all` given was read as the running loop's GPUs, so on a machine of four a loop of `--gpus 0,1`
    took it as its own: no note, and the submission trained on two."""
    from autoresearch.cli.commands import not_taken
    from autoresearch.loop.activity import Session

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    running = Session(pid=1234, started=0.0, workers=["gpu 0", "gpu 1"], placement=("--gpus", "0,1"))
    note = not_taken(["--gpus", "all"], running)
    assert note is not None and "not --gpus all," in note, note
    everything = Session(pid=1234, started=0.0, workers=[f"gpu {n}" for n in range(4)], placement=("--gpus", "0,1,2,3"))
    assert not_taken(["--gpus", "all"], everything) is None
