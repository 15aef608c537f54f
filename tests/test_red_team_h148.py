"""Red team (helper 148) of helper 147's walk: `submit`'s note of options a running loop was not started with
(cli/commands.py), `wait`'s error set aside where a later loop ran (loop/waiting.py), the hint that starts a loop
again (loop/activity.py). Each test marked BROKE failed before its fix.

- BROKE: `submit --workers 2` to a loop started with `--ray` said to start it again with `autoresearch run --agent
  queue --ray --workers 2`, refused ("give --ray or --gpus/--workers, not both"); to a loop of `--gpus 0,1`, with
  `--gpus 0,1 --workers 2`, refused too ("give --gpus or --workers, not both"). The options given of where runs train
  take the place of the loop's, not a place beside them.
- BROKE: the note's command was the running loop's recorded options (`.autoresearch/loop.json`) as they stood, unquoted
  and unchecked: a record written by hand (or by an older, broken version) put `--timeout 60;touch pwned` in a command
  a coding agent runs as it reads it. The resume hint names only options a loop records (`_said`), quoted; the note
  now does the same, and names no command where the record holds none a loop would take.
- BROKE: `_said` took `--gpus 0 --workers 2` (a record written by hand) for options `run` takes: the resume hint was a
  command refused.
- BROKE: a loop recorded while the clock was ahead (a VM booted before its clock was set, then corrected), or a
  history line written by hand with a start in the future, counted in `wait` as a loop started after driver.log's last
  write, for as long as the clock had not caught up: every background loop's error since was set aside, and `wait`
  said only that no loop was running. A loop that starts later than now has not run after anything.
- BROKE: a background loop whose error came within the second its session started, on a filesystem that keeps whole
  seconds (or whose server's clock is behind, NFS), had driver.log's time before its own session's start: its own
  error was set aside as an earlier loop's. A loop that started after the log's time counts only where it ended more
  than a few seconds after it (the background loop's own session ends before it writes its error).
"""

from __future__ import annotations

import json
import re
import time

import pytest
from loop_support import with_constants
from test_scheduler import scheduler

from autoresearch.loop import activity
from autoresearch.loop.waiting import LOOP_STARTED, last_error


def _suggested(err: str) -> str | None:
    """The command the note says starts the loop again with the options given, or None where it names none."""
    found = re.search(r"start it again: `([^`]*)`", " ".join(err.split()))
    return found.group(1) if found else None


def _refused(command: str) -> str | None:
    """Why `run` refuses `command` at its start, before any GPU or core is looked at; None where it takes it."""
    import shlex

    from autoresearch.cli.commands import check_placement
    from autoresearch.cli.parser import parse
    from autoresearch.errors import AutoresearchError

    words = shlex.split(command)
    assert words[:2] == ["autoresearch", "run"], command
    args = parse(words[1:])
    try:
        check_placement(args)
        if args.gpus is not None and args.workers is not None:
            return "give --gpus or --workers, not both"
    except AutoresearchError as exc:
        return str(exc)
    return None


@pytest.mark.slow  # a driver thread and three `submit`s beside it
def test_submit_note_names_only_a_command_run_takes(workspace, capsys, tmp_path):
    """BROKE: a loop of `--ray` given `--workers 2`, one of `--gpus 0,1` given `--workers 2`, and a record written by
    hand with a word no loop records: each note's command was refused by `run`, or ran what the record held."""
    from test_submit import beside

    from autoresearch.cli import main

    sched, _ = scheduler(workspace, gpus=None, workers=2, inbox=True)
    sched.run(None)  # the baseline
    sched.placement = ["--ray"]
    said = []

    def placed(words: list[str]) -> None:
        path = workspace.state / activity.SESSION_NAME
        record = json.loads(path.read_text())
        path.write_text(json.dumps({**record, "placement": words}))

    def scenario():
        for lr, words in ((0.9, None), (0.8, ["--gpus", "0,1"]), (0.7, ["--timeout", f"60;touch {tmp_path}/pwned"])):
            if words is not None:
                placed(words)
            workspace.write_train_py(with_constants(workspace.committed_train_py(), LR=lr))
            args = ["submit", "-m", f"LR {lr}", "--workers", "2", "--workspace", str(workspace.root)]
            said.append((main(args), *capsys.readouterr()))

    beside(sched, scenario)
    assert [rc for rc, *_ in said] == [0, 0, 0], said
    assert all("note: the loop already running" in err for *_, err in said), said
    for _, _, err in said[:2]:
        command = _suggested(err)
        assert command is not None and _refused(command) is None, err
    assert "autoresearch run --agent queue --workers 2" in _suggested(said[0][2])
    forged = said[2][2]
    assert ";touch" not in (_suggested(forged) or ""), forged
    assert not (tmp_path / "pwned").exists()


def test_the_resume_hint_names_no_gpus_and_workers_together(tmp_path):
    """BROKE: a record of `--gpus 0 --workers 2` (by hand) was named as the command to start the loop again."""
    with activity.session(tmp_path, ["gpu 0"], placement=["--gpus", "0", "--workers", "2"]):
        pass
    assert "--workers 2" not in activity.run_command(tmp_path, "--agent", "queue")


def _errored_log(state, at: float):
    log = state / "driver.log"
    log.write_text(f"{LOOP_STARTED}, 2026-12-07 18:40:00: ...\nerror: the baseline crashed\n  hint: see its log\n")
    import os

    os.utime(log, (at, at))
    return log


def test_a_loop_recorded_in_the_future_does_not_hide_every_later_error(tmp_path):
    """BROKE: a loop that ran while the clock was a day ahead (its start recorded then) set aside the error of every
    background loop until the clock caught up."""
    now = time.time()
    line = {"started": now + 86400, "ended": now + 86500, "workers": ["cpu 0", "cpu 1"]}
    (tmp_path / activity.HISTORY_NAME).write_text(json.dumps(line) + "\n")
    log = _errored_log(tmp_path, now)
    assert last_error(log) == "error: the baseline crashed hint: see its log"


def test_a_background_loops_own_error_within_its_first_second_is_not_set_aside(tmp_path):
    """BROKE: the loop's session began at x.4 s and its error was written at x.9 s, on a filesystem that keeps whole
    seconds: driver.log's time (x.0) was before the loop's own start, and `wait` set its own error aside."""
    second = float(int(time.time()) - 100)
    line = {"started": second + 0.4, "ended": second + 0.8, "workers": ["cpu 0", "cpu 1"]}
    (tmp_path / activity.HISTORY_NAME).write_text(json.dumps(line) + "\n")
    log = _errored_log(tmp_path, second)  # written at x.9, kept as x.0
    assert last_error(log) == "error: the baseline crashed hint: see its log"
    later = {"started": second + 2, "ended": second + 40, "workers": ["cpu 0", "cpu 1"]}
    with (tmp_path / activity.HISTORY_NAME).open("a") as history:
        history.write(json.dumps(later) + "\n")  # a loop started by a script at once, stopped later: that one stopped
    assert last_error(log) is None
