"""Red team (helper 150): the promise that nothing is lost, and what the loop keeps of a person's work. Each test
marked BROKE failed before its fix.

- BROKE: a person's edit of train.py made while a confined run trained is put back, and the loop says "what was moved
  aside kept in .autoresearch/quarantine/<folder>; edit train.py between experiments". That folder was no person's
  (`-yours` named only one holding program.md or a prompt), so the next step that set anything aside past the
  quarantine's bound (2 GB: a turn that leaves 2 GB of litter, which any agent with a shell may) emptied it, the
  person's train.py with it: the edit the loop had said it kept was gone.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop, set_lr, with_constants

from autoresearch.workspace import quarantine


def _score(source: str) -> float:
    return 1.0 + (constant(source, "LR") - 0.2) ** 2 + {42: 0.0, 43: 0.002, 44: -0.002}.get(constant(source, "SEED"), 0)


@pytest.mark.slow  # about a second: a baseline and two experiments
def test_a_persons_train_py_edited_beside_a_confined_run_stays_in_the_quarantine_however_it_is_emptied(
    workspace, monkeypatch
):
    """BROKE: the person's train.py, set aside beside a run and said kept, was emptied with the folder by the next
    step that put anything aside (the bound at 0 here: every folder but the newest emptied after each such step)."""
    monkeypatch.setenv(quarantine.LIMIT_ENV, "0")
    program = workspace.root / "program.md"

    class EditedMeanwhile(FakeExecutor):
        def run(self, spec):
            outcome = super().run(spec)
            lr = constant(spec.source.read_text(), "LR")
            if lr == 0.2:  # the person begins the next idea in train.py while the loop trains this one
                spec.source.write_text(with_constants(spec.source.read_text(), LR=0.25) + "# mine\n")
            elif lr == 0.3:  # a later step sets something else aside: here program.md, as well a turn's litter
                program.write_text(program.read_text() + "\nfocus on the schedule\n")
            return replace(outcome, result=replace(outcome.result, confined=True)) if outcome.result else outcome

    events: list[str] = []
    loop = make_loop(workspace, EditedMeanwhile(_score), events=events)
    loop.baseline()
    loop.step(ScriptedAgent([set_lr(0.2)]))
    said = [e for e in events if "train.py was edited while experiment" in e]
    assert len(said) == 1, events
    loop.step(ScriptedAgent([set_lr(0.3)]))
    kept = [p for p in (workspace.state / quarantine.FOLDER).rglob("train.py") if "# mine" in p.read_text()]
    assert len(kept) == 1, (said, sorted(p.name for p in (workspace.state / quarantine.FOLDER).iterdir()))
    assert constant(kept[0].read_text(), "LR") == 0.25
