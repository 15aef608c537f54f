"""The quarantine (.autoresearch/quarantine/): what untrusted steps left, kept for a person, held to a bound."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest
from loop_support import FakeExecutor, agent_channel, make_loop
from test_agent_turn import score

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
    oldest = step_folder(parent, "20261205-010000-a", {"program.md": 2000, "prompts/style.md": 300, "a.bin": MB})
    older = step_folder(parent, "20261205-020000-b", {"litter/b.bin": MB, "program.md": 2 * MB})  # no person's
    middle = step_folder(parent, "20261205-030000-c", {"c.bin": MB})
    newest = step_folder(parent, "20261205-040000-d", {"d.bin": 3 * MB})  # alone over the limit: kept all the same
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.md").write_text("not the quarantine's")
    (older / "prompts").symlink_to(outside)  # removed, never followed

    emptied = quarantine.prune(parent, newest, 4 * MB + 100_000)  # 100 kB: the folders' own blocks, the text
    assert emptied == [oldest.name, older.name]  # then 1 + 3 MB and the person's text: under the limit
    assert sorted(p.relative_to(oldest).as_posix() for p in oldest.rglob("*")) == [
        "program.md",
        "prompts",
        "prompts/style.md",
    ]
    assert not older.exists() and (outside / "keep.md").exists()
    assert (middle / "c.bin").exists() and (newest / "d.bin").exists()
    assert used(parent) <= 4 * MB + 100_000
    assert quarantine.prune(parent, newest, 4 * MB + 100_000) == []  # nothing more to take


def test_a_folder_nested_past_what_a_path_can_name_is_emptied(tmp_path) -> None:
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
    assert quarantine.prune(parent, newest, 0) == [deep.name] and not deep.exists()


def test_the_limit_is_read_from_the_environment_and_a_bad_one_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv(quarantine.LIMIT_ENV, raising=False)
    assert quarantine.limit_bytes() == 2 * 10**9
    monkeypatch.setenv(quarantine.LIMIT_ENV, "0.5")
    assert quarantine.limit_bytes() == 5 * 10**8
    monkeypatch.setenv(quarantine.LIMIT_ENV, "lots")
    with pytest.raises(AutoresearchError, match="AUTORESEARCH_QUARANTINE_GB takes a size in GB"):
        quarantine.limit_bytes()


def test_litter_an_agent_leaves_at_every_turn_does_not_pile_up_past_the_limit(workspace, tmp_path, monkeypatch):
    """BROKE, fixed: what every turn left was kept in the quarantine for good; a turn that left 3 MB (or 3 GB) each
    time filled the disk by morning, and a full disk stops the loop."""
    monkeypatch.setenv(quarantine.LIMIT_ENV, "0.007")
    parent = workspace.state / quarantine.FOLDER
    person = step_folder(parent, "20000101-000000-x", {"program.md": 500})  # set aside during a run, long ago
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
        f"set -e\n{sys.executable} -c {shlex.quote(edit)}\nhead -c 3000000 /dev/urandom > litter.bin\necho LR\n"
    )
    loop.run(CommandAgent(f"sh {shlex.quote(str(script))}", timeout_s=60), max_experiments=5)
    turns = [row for row in loop.ledger.all() if "litter.bin" in (row.reason or "")]
    assert len(turns) == 5, [row.reason for row in loop.ledger.all()]
    assert used(parent) <= 7 * MB + 64 * 1024
    assert len(list(parent.rglob("litter.bin"))) == 2  # the last two turns'
    assert (person / "program.md").exists()
    assert any("the quarantine keeps at most 0.007 GB" in event for event in events), events
