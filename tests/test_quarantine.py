"""The quarantine (.autoresearch/quarantine/): what untrusted steps left, kept for a person, held to a bound."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest
from loop_support import FakeExecutor, agent_channel, constant, make_loop, one_edit
from test_agent_turn import score

from autoresearch import files
from autoresearch.agents.command_agent import CommandAgent
from autoresearch.errors import AutoresearchError
from autoresearch.workspace import quarantine

MB = 10**6


def used(folder: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*") if not p.is_symlink())


def step_folder(parent: Path, name: str, files: dict[str, int]) -> Path:
    folder = parent / name
    for rel, size in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(os.urandom(size))
    return folder


def test_the_oldest_folders_are_emptied_first_down_to_the_limit_and_a_persons_text_stays(tmp_path) -> None:
    parent = tmp_path / "quarantine"
    person = {"program.md": 2000, "prompts/style.md": 300, "a.bin": MB}
    oldest = step_folder(parent, f"20261205-010000-a{quarantine.YOURS}", person)  # a run's: the person's edit in it
    agents = step_folder(parent, "20261205-015000-p", {"prompts/junk.md": 1000, "program.md": 1000})  # a turn's
    older = step_folder(parent, "20261205-020000-b", {"litter/b.bin": MB})
    middle = step_folder(parent, "20261205-030000-c", {"c.bin": MB})
    newest = step_folder(parent, "20261205-040000-d", {"d.bin": 3 * MB})  # alone over the limit: kept all the same
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.md").write_text("not the quarantine's")
    (older / "prompts").symlink_to(outside)  # removed, never followed

    limit = 4 * MB + 100_000  # 100 kB: the folders' own blocks, the person's text
    assert quarantine.prune(parent, newest, limit) == [oldest.name, agents.name, older.name]
    assert sorted(p.relative_to(oldest).as_posix() for p in oldest.rglob("*")) == [
        "program.md",
        "prompts",
        "prompts/style.md",
    ]
    assert not agents.exists() and not older.exists() and (outside / "keep.md").exists()
    assert (middle / "c.bin").exists() and (newest / "d.bin").exists()
    assert used(parent) <= limit
    assert quarantine.prune(parent, newest, limit) == []  # nothing more to take


@pytest.mark.slow
def test_what_lies_deeper_than_a_path_can_name_is_counted_and_emptied(tmp_path) -> None:
    """BROKE, fixed: the quarantine's size was counted by listing paths, and a folder nested past PATH_MAX (a
    turn's nested repository, moved aside whole) counted nothing: 60 MB on disk were counted as 0.6 (red team)."""
    parent = tmp_path / "quarantine"
    deep = parent / "20261205-010000-a"
    deep.mkdir(parents=True)
    here = os.open(deep, os.O_RDONLY)
    for _ in range(3000):  # 6,000 characters: more than a path may name; deeper than Python's recursion limit
        os.mkdir("d", dir_fd=here)
        here, up = os.open("d", os.O_RDONLY, dir_fd=here), here
        os.close(up)
    with open(os.open("bottom", os.O_WRONLY | os.O_CREAT, dir_fd=here), "wb") as bottom:
        bottom.write(os.urandom(MB))
    os.close(here)
    newest = step_folder(parent, "20261205-020000-b", {"b.bin": 1000})
    assert quarantine.prune(parent, newest, 16 * MB) == []  # 3,000 folders of 4 KiB and the file: 13.3 MB
    # Over 11 MB: listed by path, the ~2,000 folders a path can name, 8 MB, and not the file.
    assert quarantine.prune(parent, newest, 11 * MB) == [deep.name] and not deep.exists()


def test_a_hard_link_grown_after_it_was_set_aside_and_empty_files_count(tmp_path) -> None:
    """BROKE, fixed (red team): a folder's size was kept from the first count, and a file set aside that was a hard
    link to one the turn kept (in __pycache__/, which the loop leaves alone) grew through that name uncounted: 21 MB
    under a 7 MB limit after 8 turns. And 200,000 empty files counted for nothing."""
    parent = tmp_path / "quarantine"
    stash = tmp_path / "stash"  # the turn's other name for it
    stash.write_bytes(b"")
    older = parent / "20261205-010000-a"
    older.mkdir(parents=True)
    os.link(stash, older / "litter")
    second = newest = step_folder(parent, "20261205-020000-b", {"b.bin": 1000})
    assert quarantine.prune(parent, newest, MB) == []
    stash.write_bytes(os.urandom(2 * MB))
    assert quarantine.prune(parent, newest, MB) == [older.name]

    empty = parent / "20261205-030000-c"
    empty.mkdir()
    for n in range(1000):
        (empty / str(n)).touch()
    newest = step_folder(parent, "20261205-040000-d", {"d.bin": 1000})
    assert quarantine.prune(parent, newest, 3 * MB) == [second.name, empty.name]  # 1,000 blocks at least: 4 MB


def test_a_folder_moved_while_it_is_removed_takes_nothing_outside_with_it(tmp_path, monkeypatch) -> None:
    """Removal goes back up a tree through "..": a folder moved meanwhile (no run or turn still runs by then, but
    should one) would lead it above the tree. It checks each ".." is the folder it came down from (red team)."""
    top, elsewhere = tmp_path / "top", tmp_path / "elsewhere"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f").touch()
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("not the tree's")
    real_unlink = os.unlink

    def unlink_then_move(path, *, dir_fd=None):
        real_unlink(path, dir_fd=dir_fd)
        if path == "f":  # as if a process moved the tree's folder away now
            os.rename(top / "a", elsewhere / "a")

    monkeypatch.setattr(os, "unlink", unlink_then_move)
    with pytest.raises(OSError, match="changed while it was walked"):
        files.remove_tree(top)
    assert (elsewhere / "keep").read_text() == "not the tree's"


def test_the_limit_is_read_from_the_environment_and_a_bad_one_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv(quarantine.LIMIT_ENV, raising=False)
    assert quarantine.limit_bytes() == 2 * 10**9
    monkeypatch.setenv(quarantine.LIMIT_ENV, "0.5")
    assert quarantine.limit_bytes() == 5 * 10**8
    monkeypatch.setenv(quarantine.LIMIT_ENV, "lots")
    with pytest.raises(AutoresearchError, match="AUTORESEARCH_QUARANTINE_GB takes a size in GB"):
        quarantine.limit_bytes()


@pytest.mark.slow  # over a second: the fast subset stays under a minute
def test_litter_an_agent_leaves_at_every_turn_does_not_pile_up_past_the_limit(workspace, tmp_path, monkeypatch):
    """BROKE, fixed: what every turn left was kept in the quarantine for good; a turn that left 3 MB (or 3 GB) each
    time filled the disk by morning, and a full disk stops the loop. A prompt of the agent's own is no person's text
    (red team: kept as one, 80 of them passed a 5 MB limit 17 times over)."""
    monkeypatch.setenv(quarantine.LIMIT_ENV, "0.007")
    parent = workspace.state / quarantine.FOLDER
    person = step_folder(parent, f"20000101-000000-x{quarantine.YOURS}", {"program.md": 500})  # during a run
    events: list[str] = []
    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=2, events=events)
    loop.baseline()
    script = tmp_path / "agent.sh"
    count = agent_channel(workspace) / "turns"  # each turn proposes another LR: the same one again is no proposal
    edit = (
        f"import pathlib, re; c = pathlib.Path({str(count)!r}); n = int(c.read_text()) + 1 if c.exists() else 1; "
        "c.write_text(str(n)); p = pathlib.Path('train.py'); "
        "p.write_text(re.sub(r'(?m)^LR = \\S+', f'LR = {0.2 + n / 100}', p.read_text()))"
    )
    script.write_text(
        f"set -e\n{sys.executable} -c {shlex.quote(edit)}\nhead -c 2000000 /dev/urandom > litter.bin\n"
        "mkdir -p prompts && head -c 1000000 /dev/urandom > prompts/junk.md\necho LR\n"  # a prompt of its own
    )
    loop.run(CommandAgent(f"sh {shlex.quote(str(script))}", timeout_s=60), max_experiments=5)
    turns = [row for row in loop.ledger.all() if "litter.bin" in (row.reason or "")]
    assert len(turns) == 5, [row.reason for row in loop.ledger.all()]
    assert used(parent) <= 7 * MB + 64 * 1024
    assert len(list(parent.rglob("litter.bin"))) == len(list(parent.rglob("junk.md"))) == 2  # the last two turns'
    assert (person / "program.md").exists()
    assert any("the quarantine keeps at most 0.007 GB" in event for event in events), events


def test_a_persons_edit_made_during_a_run_stays_however_the_quarantine_is_emptied(workspace, monkeypatch):
    """Your edit of program.md or a prompt during a run is put back, and the loop says where it kept it: that folder
    is named so (-yours), and emptied it keeps your text."""
    monkeypatch.setenv(quarantine.LIMIT_ENV, "0")  # every folder but the newest emptied after each step
    program, prompt = workspace.root / "program.md", workspace.root / "prompts" / "style.md"

    def score_as_the_person_edits(source: str) -> float:
        if constant(source, "LR") == 0.2:
            program.write_text("focus on the schedule\n")
        elif constant(source, "LR") == 0.3:
            prompt.parent.mkdir(exist_ok=True)
            prompt.write_text("short answers\n")
        return score(source)

    events: list[str] = []
    loop = make_loop(workspace, FakeExecutor(score_as_the_person_edits), baseline_runs=2, events=events)
    loop.baseline()
    before = program.read_text()
    for lr in (0.2, 0.3):
        loop.step(one_edit(f"LR {lr}", [(f"LR = {constant(loop.best().source, 'LR')}", f"LR = {lr}")]))
    assert program.read_text() == before and not prompt.exists()  # both put back
    kept = [e for e in events if "changed while" in e]
    assert len(kept) == 2 and all(quarantine.YOURS in e for e in kept), events
    (first,) = (workspace.state / quarantine.FOLDER).glob(f"*{quarantine.YOURS}/program.md")
    assert first.read_text() == "focus on the schedule\n"
    (second,) = (workspace.state / quarantine.FOLDER).glob(f"*{quarantine.YOURS}/prompts/style.md")
    assert second.read_text() == "short answers\n"
