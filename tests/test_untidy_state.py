"""A workspace its user tidied between nights: the state folder deleted, ignored files cleaned away, the loop's git
refs pruned. What `rebuild-ledger` gets back, and that the loop neither starts afresh over it nor stops for good."""

from __future__ import annotations

import shutil

import pytest
from loop_support import FakeExecutor, ScriptedAgent, constant, make_loop, set_lr

from autoresearch.loop.judge import run_values
from autoresearch.loop.ledger import Ledger
from autoresearch.loop.rebuild import not_recovered, rebuild
from autoresearch.loop.scheduler import Scheduler
from autoresearch.loop.workers import devices, make_workers
from autoresearch.vocabulary import Kind, Status


@pytest.mark.slow  # over half a second with its setup
def test_after_the_state_folder_is_deleted_and_rebuilt_the_baseline_is_measured_again(workspace) -> None:
    """`rm -rf .autoresearch` (ledger and runs' results both), then `rebuild-ledger`: the baseline's seeds are gone
    (results.tsv keeps their mean). Every `run` trained a change, then stopped with "no noise measured yet / hint:
    ... run `autoresearch run`", the command that failed (helper 128). The next step trains the baseline's seeds
    again, saying so, and judges the change."""
    executor = FakeExecutor(lambda source: 3.0 + constant(source, "LR") + 0.001 * constant(source, "SEED") % 7)
    loop = make_loop(workspace, executor)
    loop.baseline()
    loop.step(ScriptedAgent([set_lr(0.01)]))
    loop.ledger.close()
    shutil.rmtree(workspace.state)
    rebuild(workspace.root, workspace.git)
    assert any("the baseline's seeds" in note for note in not_recovered(workspace.root))
    loop = make_loop(workspace, executor)
    said = []
    loop.reporter.message = said.append
    exp = loop.step(ScriptedAgent([set_lr(0.001)]))
    assert exp.status in (Status.KEEP, Status.DISCARD), exp.reason
    baseline = loop.ledger.get(1)
    assert baseline.kind == Kind.BASELINE and len(run_values(baseline)) == 3, baseline.runs
    assert any("training it again" in line for line in said), said
    assert "train.py" not in loop.git.changed_paths()  # the best's again, not the baseline's


def _cleaned(workspace) -> FakeExecutor:
    """A workspace of 3 experiments (exp 2 discarded, exp 3 kept), then `git clean -xfd`: .autoresearch/ and
    results.tsv gone, git alone left with them; the executor it was trained with."""
    executor = FakeExecutor(lambda source: 3.0 + constant(source, "LR"))
    loop = make_loop(workspace, executor)
    loop.baseline()
    loop.step(ScriptedAgent([set_lr(0.9)]))  # discarded: refs/autoresearch/discarded/2
    loop.step(ScriptedAgent([set_lr(0.01)]))  # kept: `exp 3: ...` on the branch
    loop.ledger.close()
    workspace.git("clean", "-q", "-xfd")
    assert not workspace.state.exists() and not (workspace.root / "results.tsv").exists()
    return executor


@pytest.mark.slow  # over half a second
def test_a_workspace_whose_ignored_files_were_cleaned_away_is_not_started_afresh(workspace, subprocess_env) -> None:
    """`git clean -xfd` or `git stash -a` between nights take .autoresearch/ and results.tsv; git keeps the
    experiments. `status` said "no experiments yet", `run` trained a new baseline over them (helper 128). Now every
    command refuses before anything trains and says to rebuild the ledger, which git alone then does."""
    import subprocess
    import sys

    import pytest

    from autoresearch.errors import AutoresearchError

    executor = _cleaned(workspace)
    calls = len(executor.calls)
    with pytest.raises(AutoresearchError, match="missing or empty") as raised:
        make_loop(workspace, executor).run(ScriptedAgent([set_lr(0.02)]), 1)
    assert "rebuild-ledger" in raised.value.hint and len(executor.calls) == calls
    cli = [sys.executable, "-m", "autoresearch.cli"]
    status = subprocess.run([*cli, "status", "--workspace", str(workspace.root)], capture_output=True, text=True,
                            env=subprocess_env, timeout=120)  # fmt: skip
    assert status.returncode == 2 and "rebuild-ledger" in status.stderr + status.stdout, status
    assert "Traceback" not in status.stderr
    rebuilt = subprocess.run([*cli, "rebuild-ledger", "--workspace", str(workspace.root)], capture_output=True,
                             text=True, env=subprocess_env, timeout=120)  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    said = rebuilt.stdout + rebuilt.stderr
    assert "not recovered: the baseline's seeds" in said and "val_bpb (exp 3)" in said, said
    rows = {e.id: (e.kind, e.status) for e in Ledger(workspace.root).all()}
    assert rows == {1: (Kind.BASELINE, Status.KEEP), 2: (Kind.EXPERIMENT, Status.DISCARD),
                    3: (Kind.EXPERIMENT, Status.KEEP)}, rows  # fmt: skip


def test_a_fresh_workspace_is_no_history_to_rebuild(workspace) -> None:
    """Git's own commits (`init`'s) are no experiment: a fresh workspace starts with its baseline."""
    from autoresearch.loop.ledger import has_history

    assert not has_history(workspace.root)
    make_loop(workspace, FakeExecutor(lambda source: 3.0 + constant(source, "LR"))).baseline()


@pytest.mark.slow  # over half a second
def test_a_ledger_rebuilt_from_git_alone_goes_on_measuring_what_it_lacks(workspace) -> None:
    """Rebuilt from git alone (no results.tsv, no runs' results), the best has no val_bpb and the baseline no seeds:
    the next step trains both again, then judges its change against them (it died on a None best before)."""
    executor = _cleaned(workspace)
    rebuild(workspace.root, workspace.git)
    loop = make_loop(workspace, executor)
    exp = loop.step(ScriptedAgent([set_lr(0.02)]))
    assert exp.status == Status.DISCARD and "worse" in exp.reason, exp.reason
    rows = loop.ledger.all()
    assert len(run_values(rows[0])) == 3 and rows[2].val_bpb is not None and rows[2].status == Status.KEEP


def _tidied(workspace) -> dict:
    """A baseline and a discarded change, then the loop's refs deleted and git pruned (`git for-each-ref
    refs/autoresearch | xargs git update-ref -d; git gc --prune=now`), then the ledger lost; each row's
    (status, val_bpb) before."""
    executor = FakeExecutor(lambda source: 3.0 + constant(source, "LR"))
    loop = make_loop(workspace, executor)
    loop.baseline()
    loop.step(ScriptedAgent([set_lr(0.9)]))  # worse: discarded
    before = {e.id: (e.status, e.val_bpb, e.description) for e in loop.ledger.all()}
    loop.ledger.close()
    git = workspace.git
    for ref in git("for-each-ref", "--format=%(refname)", "refs/autoresearch").split():
        git("update-ref", "-d", ref)
    git("reflog", "expire", "--expire=now", "--all")
    git("gc", "-q", "--prune=now")
    (workspace.state / "ledger.sqlite").unlink()
    return before


@pytest.mark.slow  # over half a second with its setup
def test_rebuild_after_the_discarded_refs_were_tidied_away_keeps_the_values_results_tsv_has(workspace) -> None:
    """rebuild-ledger skipped every results.tsv line whose commit git had pruned, and the runs' folders made each
    "CRASH no val_bpb | (unknown)" (helper 128): the values, descriptions and statuses were gone for good. The
    line is kept, and `show` says why it has no diff."""
    from autoresearch.report.compare import show_text

    before = _tidied(workspace)
    _, _, skipped = rebuild(workspace.root, workspace.git)
    after = {e.id: (e.status, e.val_bpb, e.description) for e in Ledger(workspace.root).all()}
    assert after == before and not skipped, (before, after, skipped)
    shown = show_text(workspace.git, Ledger(workspace.root).all(), 2)
    assert "no commit of it" in shown and "rejected" not in shown, shown
    assert any("experiments 2: their commits are gone" in note for note in not_recovered(workspace.root))
    assert rebuild(workspace.root, workspace.git)[2] == []  # results.tsv as it wrote it reads the same again
    assert {e.id: (e.status, e.val_bpb) for e in Ledger(workspace.root).all()} == {
        i: (s, v) for i, (s, v, _) in before.items()
    }


@pytest.mark.slow  # over half a second with its setup
def test_a_pruned_commit_whose_short_name_reads_as_a_number_is_kept_too(workspace) -> None:
    """results.tsv names a commit by 7 hex digits; some are digits alone, or read as a float ("1e23456"): the
    ledger would store such a name as a number. The line is kept, its value and status with it."""
    before = _tidied(workspace)
    tsv = workspace.root / "results.tsv"
    lines = tsv.read_text().splitlines(keepends=True)
    for name in ("1234567", "1e23456"):
        lines[2] = name + lines[2][lines[2].index("\t") :]
        tsv.write_text("".join(lines))
        rebuild(workspace.root, workspace.git)
        assert Ledger(workspace.root).get(2).val_bpb == before[2][1]
        assert name in Ledger(workspace.root).get(2).reason


@pytest.mark.slow  # over half a second with its setup
def test_try_after_a_rebuild_without_the_runs_measures_the_baseline_again_and_judges_the_edit(workspace) -> None:
    """`try` stopped as `run` did ("no noise measured yet"); it measures the baseline's seeds again, the edit held
    aside meanwhile, then judges the edit."""
    from loop_support import with_constants

    from autoresearch.loop.trying import try_working_tree

    executor = FakeExecutor(lambda source: 3.0 + constant(source, "LR") + 0.001 * constant(source, "SEED") % 7)
    make_loop(workspace, executor).baseline()
    shutil.rmtree(workspace.state)
    rebuild(workspace.root, workspace.git)
    workspace.write_train_py(with_constants(workspace.read_train_py(), LR=0.001))
    exp = try_working_tree(make_loop(workspace, executor), "LR 0.001")
    assert exp.description == "LR 0.001" and exp.status in (Status.KEEP, Status.DISCARD), exp.reason
    assert len(run_values(Ledger(workspace.root).get(1))) == 3


@pytest.mark.slow  # over half a second with its setup
def test_a_loop_killed_while_it_measured_the_baseline_again_puts_its_train_py_back(workspace) -> None:
    """Killed during a seed of the baseline trained again, the loop leaves the baseline's seeded train.py in the
    working tree, not the best's: the next start puts the best's back, as after any run of its own."""
    from autoresearch.loop.recovery import seeded

    executor = FakeExecutor(lambda source: 3.0 + constant(source, "LR"))
    loop = make_loop(workspace, executor)
    loop.baseline()
    loop.step(ScriptedAgent([set_lr(0.01)]))
    loop.step(ScriptedAgent([set_lr(0.001)]))  # kept: the best is no child of the baseline's
    assert [e.status for e in loop.ledger.all()] == [Status.KEEP] * 3
    baseline = loop.ledger.get(1).source
    loop.ledger.close()
    shutil.rmtree(workspace.state)
    rebuild(workspace.root, workspace.git)
    workspace.write_train_py(seeded(baseline, 1))  # as the kill left it
    loop = make_loop(workspace, executor)
    loop.check_clean()
    assert "train.py" not in loop.git.changed_paths()


def test_run_without_an_agent_after_a_rebuild_keeps_the_uncommitted_edit_in_train_py(workspace) -> None:
    """Red team (helper 134): `run` with no agent (a coding agent submits) allows an edit in the working tree's
    train.py. After a ledger rebuilt without the runs' folders, Scheduler.run measured the baseline again, training it
    in the working tree and then writing the committed train.py: the submitter's edit was lost."""

    def score(source: str) -> float:  # the seeds differ: a noise to measure
        return 3.0 + constant(source, "LR") + 0.001 * (constant(source, "SEED") % 7)

    make_loop(workspace, FakeExecutor(score), baseline_runs=3).baseline()
    shutil.rmtree(workspace.state)
    rebuild(workspace.root, workspace.git)
    from loop_support import with_constants

    edit = with_constants(workspace.read_train_py(), LR=0.001)
    workspace.write_train_py(edit)
    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=3)
    found = make_workers(loop, devices(None, 1, cores=2), lambda device: FakeExecutor(score))
    Scheduler(loop, found).run(None, max_experiments=0)
    assert workspace.read_train_py() == edit


@pytest.mark.slow  # over half a second
def test_the_baseline_measured_again_with_workers_trains_on_a_workers_device_not_the_drivers(workspace) -> None:
    """BROKE, fixed: after a ledger rebuilt without the runs' folders, Scheduler.run trained the baseline's seeds again
    with the loop's own executor, the driver's: with `--ray` one on a head node without a GPU, whose runs are
    refused beside the workers' (another setup). They train on a worker's executor now."""

    def score(source: str) -> float:
        return 3.0 + constant(source, "LR") + 0.001 * (constant(source, "SEED") % 7)

    make_loop(workspace, FakeExecutor(score), baseline_runs=3).baseline()
    shutil.rmtree(workspace.state)
    rebuild(workspace.root, workspace.git)
    driver, worker = FakeExecutor(score, setup="no GPU; the driver"), FakeExecutor(score)
    loop = make_loop(workspace, driver, baseline_runs=3)
    found = make_workers(loop, devices(None, 2, cores=2), lambda device: worker)
    Scheduler(loop, found).run(None, max_experiments=0)
    assert driver.calls == [] and len(worker.calls) == 3
    assert len(run_values(Ledger(workspace.root).get(1))) == 3
