"""Red team (helper 150): the promise that nothing is lost, and what the loop keeps of a person's work. Each test
marked BROKE failed before its fix.

- BROKE: a person's edit of train.py made while a confined run trained (or a file of theirs, their `git stash`) is put
  back, and the loop says "what was moved aside kept in .autoresearch/quarantine/<folder>; edit train.py between
  experiments". That folder was no person's (`-yours` named only one holding program.md or a prompt), so the next step
  that set anything aside past the quarantine's bound (2 GB: a turn that leaves 2 GB of litter, which any agent with a
  shell may) emptied it: the work the loop had said it kept was gone. Such a folder is now all the person's
  (`-all-yours`) and stays whole.
- BROKE: report.md and progress.png are the loop's own files (integrity.LOOP_OWN: never taken for the agent's), but the
  loop writes them only as it exits. A coding agent's turn wrote its own (a best it never measured), and nothing put
  them back or said so: they stood all night, and where the loop never exits (killed, out of memory, which an agent
  can bring about) they were what the person read in the morning. A report a step changed is now set aside and
  written again from the ledger, and named in the agent's tidying note; the proposal stands.
- BROKE: the loop reads the train.py a turn left as a link as the file it points to, outside the agent's namespace:
  a link to a file hidden from the agent (the prepared data, the corpus it was cut from, the hub caches, Ray's token
  file) had the loop read it for the agent, and the row's reason said its first line that is no Python ("left
  train.py invalid: ... at line 1: '<the line>'"), which the agent reads in the ledger and its next prompt. A link
  that leads out of the workspace and the folders the agent may write is not followed now.
"""

from __future__ import annotations

import shlex
from dataclasses import replace

import pytest
from loop_support import FakeExecutor, ScriptedAgent, agent_channel, constant, make_loop, set_lr, with_constants
from test_agent_turn import take_turn

from autoresearch.config.paths import cache_root
from autoresearch.loop.ledger import Ledger
from autoresearch.vocabulary import Status
from autoresearch.workspace import quarantine


def _score(source: str) -> float:
    return 1.0 + (constant(source, "LR") - 0.2) ** 2 + {42: 0.0, 43: 0.002, 44: -0.002}.get(constant(source, "SEED"), 0)


@pytest.mark.slow  # about a second: a baseline and two experiments
def test_a_persons_train_py_edited_beside_a_confined_run_stays_in_the_quarantine_however_it_is_emptied(
    workspace, monkeypatch
):
    """BROKE: the person's train.py and notes, set aside beside a run and said kept, were emptied with their folder by
    the next step that put anything aside (the bound at 0 here: every folder but the newest emptied after each)."""
    monkeypatch.setenv(quarantine.LIMIT_ENV, "0")
    program = workspace.root / "program.md"

    class EditedMeanwhile(FakeExecutor):
        def run(self, spec):
            outcome = super().run(spec)
            lr = constant(spec.source.read_text(), "LR")
            if lr == 0.2:  # the person begins the next idea in train.py while the loop trains this one, and notes it
                spec.source.write_text(with_constants(spec.source.read_text(), LR=0.25) + "# mine\n")
                (workspace.root / "notes.md").write_text("try LR 0.25 next\n")
                program.write_text(program.read_text() + "\nthe schedule next\n")
            elif lr == 0.3:  # a later step sets something else aside: here program.md, as well a turn's litter
                program.write_text(program.read_text() + "\nfocus on the schedule\n")
            return replace(outcome, result=replace(outcome.result, confined=True)) if outcome.result else outcome

    events: list[str] = []
    loop = make_loop(workspace, EditedMeanwhile(_score), events=events)
    loop.baseline()
    loop.step(ScriptedAgent([set_lr(0.2)]))
    said = [e for e in events if "while experiment 2 trained (its run, confined, cannot reach it)" in e]
    assert len(said) == 1, events
    loop.step(ScriptedAgent([set_lr(0.3)]))
    kept = [p for p in (workspace.state / quarantine.FOLDER).rglob("train.py") if "# mine" in p.read_text()]
    assert len(kept) == 1, (said, sorted(p.name for p in (workspace.state / quarantine.FOLDER).iterdir()))
    assert constant(kept[0].read_text(), "LR") == 0.25
    assert (kept[0].parent / "notes.md").read_text() == "try LR 0.25 next\n"
    assert kept[0].parent.name.endswith(quarantine.ALL_YOURS) and kept[0].parent.name in said[0]
    (program_said,) = [e for e in events if "program.md changed while experiment 2" in e]
    assert kept[0].parent.name in program_said  # named as it is, not as it was before it became all yours
    assert (kept[0].parent / "program.md").read_text().endswith("the schedule next\n")


FORGED = "# autoresearch report\n\nbest val_bpb 0.612 (-40 %), kept: exp 2 (the agent's)\n"


@pytest.mark.slow  # seconds: an agent's turn with a shell, and the report drawn
def test_a_report_an_agents_turn_writes_is_not_left_for_the_person_to_read(workspace, tmp_path):
    """BROKE: report.md and progress.png are the loop's own files, never taken for the agent's (integrity.LOOP_OWN),
    but the loop writes them only as it exits: a coding agent's turn wrote its own (a best it never measured), and
    nothing put them back or said so. They stood all night, and where the loop never exits (killed, out of memory)
    they were what the person found in the morning. Now a report a step changed is written again from the ledger
    (what the step left is kept in the quarantine), and the agent's turn is not blamed for it."""
    from autoresearch.agents.command_agent import CommandAgent

    make_loop(workspace, FakeExecutor(_score), baseline_runs=2).baseline()
    report, plot = workspace.root / "report.md", workspace.root / "progress.png"
    assert not report.exists() and not plot.exists()  # as a loop leaves them before its exit
    script = tmp_path / "agent.sh"
    script.write_text(
        "set -e\nsed -i 's/^LR = .*/LR = 0.2/' train.py\n"
        f"printf %s {shlex.quote(FORGED)} > report.md\nprintf 'PNG forged' > progress.png\necho LR 0.2\n"
    )
    events: list[str] = []
    loop = make_loop(workspace, FakeExecutor(_score), events=events)
    loop.run(CommandAgent(f"sh {shlex.quote(str(script))}", timeout_s=60), max_experiments=1)
    exp = loop.ledger.all()[-1]
    assert exp.kind == "experiment", [(e.id, e.kind, e.reason) for e in loop.ledger.all()]
    assert exp.status == Status.KEEP, exp.reason  # the agent's proposal stands: the report is no file of its
    assert not report.exists() or report.read_text() != FORGED, "the agent's report was left in the workspace"
    assert not plot.exists() or plot.read_bytes() != b"PNG forged"
    assert "report.md" in exp.reason, exp.reason  # said where the agent's tidying is said


SECRET = "Alice's validation text, which no agent may read"


@pytest.mark.slow  # seconds: an agent's turn with a shell, in its namespace
def test_a_train_py_linked_to_a_file_hidden_from_the_agent_is_not_read_for_it(workspace, tmp_path):
    """BROKE: the loop reads the train.py a turn left, as a link, as the file it points to, and outside the agent's
    namespace: what is hidden from the agent (the prepared data, the corpus it was cut from, the hub caches, Ray's
    token) is not from the loop. A link to such a file made the loop read it for the agent, and say its first line
    that is no Python (`left train.py invalid: ... at line 1: '<the line>'`) in the row's reason, which the agent reads
    (the ledger, its next prompt); a file that is Python and sets SEED became the proposal, its every line in the
    ledger's diff. A link to a file outside the workspace and the folders the agent may write is not followed now."""
    hidden = cache_root() / "data" / "notes-h150.txt"  # the prepared data of every dataset: hidden from every turn
    hidden.parent.mkdir(parents=True, exist_ok=True)
    hidden.write_text(f"{SECRET}\n")
    try:
        seen = agent_channel(workspace) / "seen"
        exp, _ = take_turn(
            workspace, tmp_path, f"(cat {hidden} || true) > {seen} 2>&1\nln -sf {hidden} train.py\necho read it"
        )
    finally:
        hidden.unlink()
    assert SECRET not in seen.read_text()  # hidden from the turn itself
    rows = " ".join(f"{e.reason} {e.diff or ''}" for e in Ledger(workspace.root).all())
    assert SECRET not in rows, exp.reason
    assert exp.status == Status.CRASH and "train.py" in exp.reason, exp.reason
