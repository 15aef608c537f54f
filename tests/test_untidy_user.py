"""What a user does to a workspace between nights (helper 128's walk): a .gitignore trimmed, program.md committed by
hand, the workspace on a read-only mount, the data of an `init --root DIR` workspace deleted, torch upgraded. Each
must meet a clear word and a hint that loses nothing, never one that throws the user's work or the results away."""

from __future__ import annotations

import shutil
import sys

import pytest
from loop_support import (
    FakeExecutor,
    ScriptedAgent,
    constant,
    make_loop,
    make_workspace,
    on_a_read_only_mount,
    set_lr,
    with_constants,
)

from autoresearch.config.apparatus import Apparatus, prepare_again_hint
from autoresearch.errors import AutoresearchError
from autoresearch.loop.engine import ResearchLoop
from autoresearch.loop.trying import try_working_tree
from autoresearch.vocabulary import Status


def _executor() -> FakeExecutor:
    return FakeExecutor(lambda source: 3.0 + constant(source, "LR"))


def test_try_after_a_trimmed_gitignore_never_names_the_loops_own_files_as_changes_to_revert(workspace) -> None:
    """BROKE, fixed: with `.autoresearch/` no longer in .gitignore, `try` refused with "only train.py may change, but
    so did: .autoresearch/ledger.sqlite, ..., results.tsv" and the hint "revert those files (git checkout / rm)":
    following it deleted every result. The loop's own files are no change of the user's."""
    make_loop(workspace, _executor()).baseline()
    (workspace.root / ".gitignore").write_text("__pycache__/\n")
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.001))
    with pytest.raises(AutoresearchError) as refused:
        try_working_tree(make_loop(workspace, _executor()), "LR 0.001")
    assert str(refused.value).split("\n")[0].endswith("so did: .gitignore"), refused.value
    workspace.git("checkout", ".gitignore")  # as the hint says
    assert try_working_tree(make_loop(workspace, _executor()), "LR 0.001").status == Status.KEEP


@pytest.mark.slow  # over half a second with its setup
def test_a_hand_commit_of_program_md_gets_a_hint_that_keeps_it(workspace) -> None:
    """BROKE, fixed: `git commit -am "program: ..."` between nights met "the branch is at X, but the best experiment
    is Y; hint: `git reset --hard Y` to continue", which drops the new program.md unsaid."""
    loop = make_loop(workspace, _executor())
    loop.baseline()
    best = loop.best().commit[:7]
    loop.ledger.close()
    program = workspace.root / "program.md"
    program.write_text(program.read_text() + "\nFocus on learning rates.\n")
    workspace.git.commit("program: focus on LRs", "program.md")
    with pytest.raises(AutoresearchError) as refused:
        make_loop(workspace, _executor()).run(ScriptedAgent([set_lr(0.01)]), 1)
    assert f"`git reset --soft {best}`" in refused.value.hint and "program.md" in refused.value.hint
    workspace.git("reset", "--soft", best)  # as the hint says: then the loop goes on, the edit kept
    make_loop(workspace, _executor()).run(ScriptedAgent([set_lr(0.01)]), 1)
    assert program.read_text().endswith("Focus on learning rates.\n")


def test_a_hand_commit_of_train_py_gets_a_hint_that_saves_it_first(workspace) -> None:
    loop = make_loop(workspace, _executor())
    loop.baseline()
    loop.ledger.close()
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.02))
    head = workspace.git.commit("mine", "train.py")
    with pytest.raises(AutoresearchError) as refused:
        make_loop(workspace, _executor()).run(ScriptedAgent([set_lr(0.01)]), 1)
    assert f"`git branch mine {head[:7]}`" in refused.value.hint and "reset --hard" in refused.value.hint


@pytest.mark.slow  # over half a second
def test_status_on_a_read_only_mount_reads_the_ledger_and_run_says_the_folder_is_read_only(
    workspace, subprocess_env
) -> None:
    """BROKE, fixed: on a read-only mount (an archive, a colleague's share) `status`, `show` and `diff` said "the
    ledger ... cannot be read (unable to open database file); hint: run `autoresearch rebuild-ledger`". The ledger
    is whole: SQLite could not make its write-ahead log there."""
    loop = make_loop(workspace, _executor())
    loop.baseline()
    loop.ledger.close()  # as a loop that ended leaves it: no -wal, no -shm
    root = str(workspace.root)
    cli = f"{sys.executable} -m autoresearch"
    commands = (
        f"{cli} status --workspace {root} && {cli} show 1 --workspace {root}; echo show=$?; "
        f"{cli} run --agent tune --max-experiments 1 --plain --workspace {root}; echo run=$?"
    )
    said = on_a_read_only_mount(root, commands, subprocess_env)
    assert "show=0" in said and "exp 1 KEEP" in said and "rebuild-ledger" not in said, said
    assert "run=2" in said and "is read-only" in said and "Traceback" not in said, said


def test_the_hint_to_prepare_the_data_of_a_root_workspace_again_names_root(tiny_prepared) -> None:
    """BROKE, fixed: for a workspace made with `init --root DIR` whose data was deleted, the hint's `prepare` had no
    `--root DIR`: it prepared the interpreter's own files (minutes) into another folder, and `run` failed again."""
    a = Apparatus(preset="tiny", dataset="python-source", budget_seconds=1.0, data_dir=str(tiny_prepared))
    hint = prepare_again_hint(a)
    assert "--dataset python-source --root DIR --preset tiny" in hint, hint
    assert f"the folder named {tiny_prepared.parent.name.split('-')[2]}" in hint, hint
    own = Apparatus(
        preset="tiny", dataset="python-source", budget_seconds=1.0, data_dir="/c/data/python-source-0a1b2c3d/tiny"
    )
    own_hint = prepare_again_hint(own)
    assert "--root" not in own_hint and "with the Python the workspace was made with" in own_hint


def _trained_with_another_torch(workspace, baseline: str, change: str) -> tuple[pytest.ExceptionInfo, ResearchLoop]:
    """A baseline trained with torch `baseline`, then a change with torch `change`: the refusal, and the loop."""
    before = make_loop(workspace, FakeExecutor(lambda source: 3.0 + constant(source, "LR"), torch=baseline))
    before.baseline()
    before.ledger.close()
    after = make_loop(workspace, FakeExecutor(lambda source: 2.0 + constant(source, "LR"), torch=change))
    with pytest.raises(AutoresearchError) as refused:
        after.run(ScriptedAgent([set_lr(0.01)]), 1)
    return refused, after


@pytest.mark.slow  # over half a second with its setup
def test_a_change_trained_with_another_torch_is_not_judged_against_the_baseline(workspace) -> None:
    """BROKE, fixed: nothing recorded the torch a run trained with, so after `pip install -U torch` between nights
    every change was judged against a baseline another torch had measured (its kernels and compiler set the steps a
    budget trains: a faster torch made the next change a keep)."""
    refused, after = _trained_with_another_torch(workspace, "2.9.0+cu128", "2.13.0+cu130")
    assert "trained with torch 2.13.0+cu130, the baseline's runs with torch 2.9.0+cu128" in str(refused.value)
    assert "`pip install torch==2.9.0 --index-url https://download.pytorch.org/whl/cu128`" in refused.value.hint
    change = after.ledger.all()[-1]
    assert change.status in (Status.RUNNING, Status.QUEUED) and change.val_bpb is None  # waits for a comparable run
    same = make_loop(workspace, FakeExecutor(lambda source: 3.0 + constant(source, "LR"), torch="2.9.0+cu128"))
    same.run(ScriptedAgent([]), 0)  # the baseline's torch again: it trains and is judged
    assert same.ledger.get(change.id).status == Status.KEEP


@pytest.mark.slow  # over half a second with its setup
def test_a_state_folder_copied_from_another_workspace_is_refused_before_it_rewrites_results_tsv(
    tmp_path, tiny_prepared
) -> None:
    """BROKE, fixed: `cp -a ws1/.autoresearch ws2/` (a backup restored in the wrong place): `run` rewrote ws2's
    results.tsv from ws1's ledger, its own lines gone, then said to `git reset --hard` to a commit ws2 has not."""
    a = make_workspace(tmp_path / "a", tiny_prepared)
    loop = make_loop(a, _executor())
    loop.baseline()
    loop.step(ScriptedAgent([set_lr(0.01)]))  # kept: the best is a commit of a's
    loop.ledger.close()
    b = make_workspace(tmp_path / "b", tiny_prepared)
    loop = make_loop(b, FakeExecutor(lambda source: 3.5 + constant(source, "LR")))
    loop.baseline()
    loop.ledger.close()
    own = (b.root / "results.tsv").read_text()
    shutil.rmtree(b.state)
    shutil.copytree(a.state, b.state)
    with pytest.raises(AutoresearchError) as refused:
        make_loop(b, _executor()).run(ScriptedAgent([set_lr(0.02)]), 1)
    assert "which this workspace's git does not have" in str(refused.value) and "rebuild-ledger" in refused.value.hint
    assert (b.root / "results.tsv").read_text() == own


@pytest.mark.slow  # over half a second with its setup
@pytest.mark.parametrize("edit", [{"preset": "h100"}, {"data_dir": "/nonexistent/data/python-source-0a1b2c3d/tiny"}])
def test_an_autoresearch_json_edited_by_hand_is_refused_before_anything_trains_saying_to_put_it_back(
    workspace, edit
) -> None:
    """BROKE, fixed: an edited preset passed the start's check (the fingerprint had the data, not the preset), trained a
    whole run, then stopped saying to prepare the data again; an edited data_dir said to prepare data there. Both are
    the locked file edited: put it back."""
    import json

    from autoresearch.workspace.workspace import Workspace

    make_loop(workspace, _executor()).baseline()
    config = workspace.root / "autoresearch.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **edit}, indent=1))
    executor = _executor()
    with pytest.raises(AutoresearchError) as refused:
        make_loop(Workspace(workspace.root), executor).run(ScriptedAgent([set_lr(0.01)]), 1)
    assert "`git checkout autoresearch.json`" in refused.value.hint, refused.value
    assert executor.calls == []


def test_the_torch_hint_names_the_build_where_only_the_build_differs(workspace) -> None:
    """Red team (helper 133): the hint said `pip install torch==VERSION` with VERSION cut at "+". Where only the build
    differs (the baseline on 2.13.0+cu128, now 2.13.0+cu130, or quickstart's 2.13.0+cpu beside PyPI's CUDA build),
    that command answers "Requirement already satisfied" and the next start is refused again."""
    refused, _ = _trained_with_another_torch(workspace, "2.13.0+cu128", "2.13.0+cu130")
    assert "cu128" in refused.value.hint, refused.value.hint
