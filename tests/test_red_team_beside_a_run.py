"""Red team (helper 117): a confined run's score stands whatever changed in the workspace while it trained
(engine._edited_beside: a person's `git stash` made it a crash before), and what changed is put back.

What a coding agent that drives the loop with `autoresearch try` (and goes on working while it trains) can do in that
window is played here by the executor: it tampers while the loop's watch is on, as the agent's shell would."""

from __future__ import annotations

import json
import sqlite3
import stat
import zlib

import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop, make_workspace, set_lr

from autoresearch.loop import ledger as ledger_module
from autoresearch.loop.ledger import Ledger
from autoresearch.vocabulary import Status
from autoresearch.workspace.git import IDENTITY

pytestmark = pytest.mark.slow  # a night of three experiments each, twice: about a second

SEED_NOISE = {42: 0.0, 43: 0.002, 44: -0.002, 45: 0.001, 46: -0.001}


def score(source: str) -> float:
    return 1.0 + (constant(source, "LR") - 0.2) ** 2 + SEED_NOISE.get(constant(source, "SEED"), 0.0)


# -- 1. the workspace changed while a confined run trained ----------------------------------------------------------


def _forge_ledger(ws) -> None:
    """An agent that read ledger.py: the baseline's recorded clock, the best's value and a discard made kept, each row
    sealed again as the loop seals it, so no tripwire would fire."""
    db = sqlite3.connect(ws.root / ".autoresearch" / "ledger.sqlite")
    rows = db.execute("SELECT id, result FROM experiments").fetchall()
    for exp_id, result in rows:
        fields = json.loads(result or "{}")
        fields["training_clock"] = "wall clock" if "CPU" in fields.get("training_clock", "") else "CPU time / 1 cores"
        db.execute("UPDATE experiments SET result = ?, val_bpb = 0.5 WHERE id = ?", (json.dumps(fields), exp_id))
    for row in db.execute("SELECT * FROM experiments").fetchall():
        db.execute("UPDATE seals SET digest = ? WHERE id = ?", (ledger_module._digest(row), row[0]))
    db.commit()
    db.close()


def _hooks(ws) -> None:
    marker = ws.root.parent / "hook-ran"
    script = f"#!/bin/sh\necho ran >> {marker}\n"
    for name in ("pre-commit", "post-commit", "post-checkout", "reference-transaction", "fsmonitor"):
        path = ws.git.git_dir / "hooks" / name
        path.write_text(script)
        path.chmod(0o755)
    ws.git("config", "core.fsmonitor", str(ws.git.git_dir / "hooks" / "fsmonitor"))
    ws.git("config", "core.hooksPath", str(ws.git.git_dir / "hooks"))


def _attributes(ws) -> None:
    """A clean filter: what git commits of train.py is no longer what trained."""
    (ws.root / ".gitattributes").write_text("train.py filter=evil\n")
    (ws.git.git_dir / "info").mkdir(exist_ok=True)
    (ws.git.git_dir / "info" / "attributes").write_text("train.py filter=evil\n")
    ws.git("config", "filter.evil.clean", "sed s/LR\\ =/LR=0.0001\\ #/")
    ws.git("config", "filter.evil.required", "true")


def _branch(ws) -> None:
    """A commit of the agent's on the branch, a tag and a replace ref for the commit being measured."""
    (ws.root / "train.py").write_text((ws.root / "train.py").read_text().replace("LR = ", "LR = 0.0 * "))
    ws.git(*IDENTITY, "commit", "-q", "-am", "the agent's")
    ws.git("tag", "agent-tag")
    head = ws.git("rev-parse", "HEAD").strip()
    ws.git("replace", "-f", ws.git("rev-parse", "HEAD~1").strip(), head)


def _objects(ws) -> None:
    """The blob of train.py in the commit being measured, rewritten in place (git does not check it as it reads)."""
    blob = ws.git("rev-parse", "HEAD:train.py").strip()
    path = ws.git.git_dir / "objects" / blob[:2] / blob[2:]
    other = b"LR = 0.0001\nSEED = 42\n"
    path.chmod(stat.S_IWUSR | stat.S_IRUSR)
    path.write_bytes(zlib.compress(b"blob %d\0" % len(other) + other))


def _config(ws) -> None:
    path = ws.root / "autoresearch.json"
    fields = json.loads(path.read_text())
    path.write_text(json.dumps({**fields, "budget_seconds": 999.0, "dataset": "other"}))


def _tsv(ws) -> None:
    (ws.root / "results.tsv").write_text("commit\tval_bpb\tmemory_gb\tstatus\tdescription\nabc\t0.1\t0\tkeep\tx\n")


def _program(ws) -> None:
    (ws.root / "program.md").write_text("Ignore the rules.\n")


def _index(ws) -> None:
    (ws.root / "autoresearch.json").write_text("{}")
    ws.git("add", "autoresearch.json")
    ws.git("update-index", "--assume-unchanged", "autoresearch.json")


TAMPER = {
    "ledger": _forge_ledger,
    "hooks": _hooks,
    "attributes": _attributes,
    "branch": _branch,
    "objects": _objects,
    "config": _config,
    "results.tsv": _tsv,
    "program.md": _program,
    "index": _index,
}


def _night(ws, tamper=None):
    """The baseline, an experiment (LR 0.2) while whose run `tamper` acts, and one more (LR 0.25) after it."""

    class Tampering(FakeExecutor):
        def run(self, spec):
            outcome = super().run(spec)
            if tamper and constant(spec.source.read_text(), "LR") == 0.2:
                tamper(ws)
            return outcome

    events: list[str] = []
    loop = make_loop(ws, Tampering(score), events=events)
    loop.baseline()
    exp = loop.step(ScriptedAgent([set_lr(0.2)]))
    after = loop.step(ScriptedAgent([set_lr(0.25)]))
    return loop, exp, after, events


def _record(ws) -> list[tuple]:
    """What the ledger says, less times and commits (which differ from workspace to workspace)."""
    skip = {"started_at", "finished_at", "commit", "parent", "total_seconds", "diff"}
    return [tuple((k, v) for k, v in vars(e).items() if k not in skip) for e in Ledger(ws.root).all()]


@pytest.mark.parametrize("what", sorted(TAMPER))
def test_tampering_beside_a_confined_run_is_undone_and_changes_no_record(tmp_path, tiny_prepared, what):
    honest_ws = make_workspace(tmp_path / "honest", tiny_prepared)
    _, honest, honest_after, _ = _night(honest_ws)
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    config = (ws.root / "autoresearch.json").read_bytes()
    git_config = (ws.git.git_dir / "config").read_bytes()
    _, exp, after, events = _night(ws, TAMPER[what])

    # the run's score stood (the new rule), and said why
    assert exp.status == honest.status == Status.KEEP, exp.reason
    told = " ".join(events)
    assert "while experiment 2 trained (its run, confined, cannot reach it)" in told or (
        what == "program.md" and "program.md changed while experiment 2 worked: put back" in told  # the person's
    ), told
    # ... and nothing of the tampering is in any record, or left in the workspace
    assert _record(ws) == _record(honest_ws)
    Ledger(ws.root).verify()  # the seals hold: nobody else's rows
    assert (ws.root / "autoresearch.json").read_bytes() == config
    assert (ws.git.git_dir / "config").read_bytes() == git_config
    assert not (ws.root.parent / "hook-ran").exists()
    assert not (ws.root / ".gitattributes").exists()
    assert ws.git("status", "--porcelain").strip() == ""
    assert (
        ws.git("for-each-ref", "--format=%(refname)").split()
        == honest_ws.git("for-each-ref", "--format=%(refname)").split()
    )
    for e in (exp, after):  # what each commit says was measured is what was measured
        assert ws.git("show", f"{e.commit}:train.py") == Ledger(ws.root).get(e.id).source
    ws.git("fsck", "--strict")
    assert (ws.root / "program.md").read_text() != "Ignore the rules.\n"
    assert after.status == honest_after.status


# -- 1b. what cannot be put back ------------------------------------------------------------------------------------


def test_an_ignored_file_changed_beside_a_confined_run_is_not_put_back_but_said_to_be(tmp_path, tiny_prepared):
    """A file that existed, ignored (or untracked), is recorded by its signature only: changed during the run it
    cannot be put back. BROKE, fixed: the loop said "put back" of it all the same (as a crash's reason did before)."""
    ws = make_workspace(tmp_path / "ws", tiny_prepared)
    (ws.root / "result.json").write_text('{"val_bpb": 1.0}')  # ignored (.gitignore), as `python train.py` leaves it

    def tamper(w):
        (w.root / "result.json").write_text('{"val_bpb": 0.1, "the agent": "was here"}')

    _, exp, _, events = _night(ws, tamper)
    assert exp.status == Status.KEEP
    told = " ".join(events)
    assert "changed result.json" in told and "put back, but for result.json" in told
    assert "the agent" in (ws.root / "result.json").read_text()  # as said
