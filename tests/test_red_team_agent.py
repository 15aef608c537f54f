"""A coding agent that cheats or breaks things in its turn: what it leaves must neither stop the loop, nor act later.

Each test runs one scripted `command` agent turn through the real loop with the fake executor (test_agent_turn.py's
`take_turn`), then checks that the loop owns the workspace again and that nothing the agent left runs or stays.
"""

from __future__ import annotations

import shlex
import time

import pytest
from test_agent_turn import assert_the_loop_owns_the_workspace, set_lr, take_turn

from autoresearch.vocabulary import Status


@pytest.mark.parametrize(
    ("leave", "why"),
    [
        ("printf 'x = \"\\377\"\\n' >> train.py", "not UTF-8"),
        ("head -c 5000000 /dev/zero | tr '\\0' '#' >> train.py", "larger than 4 MiB"),
        ("rm train.py && mkdir train.py", "not a file"),
        ("rm train.py && mkfifo train.py", "not a file"),
    ],
)
def test_a_train_py_that_is_no_text_file_is_rejected(workspace, tmp_path, leave, why):
    """BROKE, fixed: a train.py not UTF-8 was a UnicodeDecodeError traceback out of the loop, an empty directory
    an IsADirectoryError as the loop wrote the best's back, a huge one was read whole into memory."""
    exp, before = take_turn(workspace, tmp_path, f"{leave}\necho broke it")
    assert exp.status == Status.CRASH and why in exp.reason
    assert_the_loop_owns_the_workspace(workspace, tmp_path, exp, before)


def test_a_train_py_made_a_link_to_a_file_outside_is_committed_as_a_file(workspace, tmp_path):
    """HOLDS. The link's text is the proposal; the loop writes it back as a file, and commits a file (the link is now
    named among what was put back after the agent)."""
    outside = tmp_path / "outside.py"
    exp, before = take_turn(
        workspace, tmp_path, f"{set_lr(0.2)}\nmv train.py {outside}\nln -s {outside} train.py\nchmod +x {outside}"
    )
    assert exp.status == Status.KEEP and "train.py left as a link" in exp.reason
    assert workspace.git("ls-tree", "HEAD", "train.py").startswith("100644 ")
    assert_the_loop_owns_the_workspace(workspace, tmp_path, exp, before)


@pytest.mark.parametrize(
    "plant",
    [
        "git init -q ../other && echo ../../other/.git > .git/commondir",  # the loop's git would read another repo
        "git rev-parse HEAD > .git/shallow",  # history cut at the best: rebuild-ledger would find no older kept one
        "git rev-parse HEAD > .git/MERGE_HEAD",  # the loop's commit refused: 'cannot do a partial commit'
        "mkdir -p .git/rebase-merge && echo x > .git/rebase-merge/head-name",
    ],
)
def test_a_file_planted_under_git_is_put_back(workspace, tmp_path, plant):
    """BROKE, fixed: .git/commondir, shallow, MERGE_HEAD and the like were not guarded: the loop's next git command
    failed (a GitError stopped it) or read another repository's config and refs, for good."""
    exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\n{plant}\necho LR 0.2")
    assert exp.status == Status.KEEP, exp.reason
    left = {"commondir", "shallow", "MERGE_HEAD", "rebase-merge"} & {p.name for p in workspace.git.git_dir.iterdir()}
    assert not left and list(workspace.state.glob("quarantine/*/.git/*")), left
    assert_the_loop_owns_the_workspace(workspace, tmp_path, exp, before)


@pytest.mark.parametrize("flag", ["--assume-unchanged", "--skip-worktree"])
def test_an_edit_hidden_from_git_status_by_an_index_flag_is_caught(workspace, tmp_path, flag):
    """BROKE, fixed: with program.md marked assume-unchanged (or skip-worktree) in the index, `git status` did not
    report its edit, which stayed for good and rejected nothing; the flag stayed too."""
    exp, before = take_turn(
        workspace, tmp_path, f"{set_lr(0.2)}\ngit update-index {flag} program.md\necho 'Cheat.' >> program.md\necho x"
    )
    assert exp.status == Status.CRASH and "changed program.md" in exp.reason
    assert "h " not in workspace.git("ls-files", "-v") and "S " not in workspace.git("ls-files", "-v")
    assert_the_loop_owns_the_workspace(workspace, tmp_path, exp, before)


def test_the_users_git_config_and_attributes_written_by_the_agent_run_nothing(workspace, tmp_path, monkeypatch):
    """BROKE, fixed: a filter in ~/.gitconfig on train.py (by ~/.config/git/attributes) ran at the loop's every
    `git add` and `git status`, after the turn was checked."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    ran = tmp_path / "the filter ran"
    script = f"""mkdir -p "$HOME/.config/git"
git config --global filter.evil.clean "touch {shlex.quote(str(ran))}; cat"
git config --global commit.gpgsign true
git config --global gpg.program "sh -c 'touch {shlex.quote(str(ran))}'"
echo 'train.py filter=evil' > "$HOME/.config/git/attributes"
{set_lr(0.2)}
echo LR 0.2"""
    exp, before = take_turn(workspace, tmp_path, script)
    assert exp.status == Status.KEEP and not ran.exists()
    assert_the_loop_owns_the_workspace(workspace, tmp_path, exp, before)


@pytest.mark.slow
def test_a_process_the_agent_left_outside_its_group_is_killed_with_the_turn(workspace, tmp_path):
    """BROKE, fixed: a `setsid` process outlived the killing of the agent's process group and edited train.py a
    second later, when the run reads it (it could as well have rewritten the ledger between two checks)."""
    edited = tmp_path / "edited"
    later = f"sleep 1; echo 'LR = 0.9' >> train.py; touch {shlex.quote(str(edited))}"
    script = f"{set_lr(0.2)}\nsetsid sh -c {shlex.quote(later)} </dev/null >/dev/null 2>&1 &\nsleep 0.3\necho LR 0.2"
    exp, before = take_turn(workspace, tmp_path, script)
    time.sleep(2)
    assert not edited.exists() and exp.status == Status.KEEP
    assert_the_loop_owns_the_workspace(workspace, tmp_path, exp, before)


def test_a_quarantine_folder_made_a_link_into_git_puts_nothing_there(workspace, tmp_path):
    """BROKE, fixed: the folder what a turn left is moved into is named by the second; one the agent made ahead as a
    link to .git received its new file `commondir` after .git was checked, and the loop's git broke for good."""
    plant = 'for s in -1 0 1 2 3; do ln -s ../../.git .autoresearch/quarantine/$(date -d "$s sec" +%Y%m%d-%H%M%S); done'
    exp, before = take_turn(
        workspace, tmp_path, f"{set_lr(0.2)}\nmkdir -p .autoresearch/quarantine\n{plant}\necho x > commondir\necho x"
    )
    assert not (workspace.git.git_dir / "commondir").exists()
    assert_the_loop_owns_the_workspace(workspace, tmp_path, exp, before)


@pytest.mark.parametrize("path", ["results.tsv", "program.md"])
def test_a_fifo_left_where_the_loop_reads_does_not_wedge_it(workspace, tmp_path, path):
    """BROKE, fixed: the check after the turn read a FIFO put in place of results.tsv or a tracked file, and waited
    for a writer forever."""
    exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\nrm {path} && mkfifo {path}\necho x")
    assert exp.status == Status.CRASH and path in exp.reason
    assert_the_loop_owns_the_workspace(workspace, tmp_path, exp, before)
