"""Whatever a coding agent does in its turn, the loop puts the workspace back and goes on.

Each test runs a scripted `command` agent (a shell script, as aider or Claude Code would act) through the
real loop with the fake executor: the baseline, one turn, then a fresh loop as the next start would make.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import sys
import time
from pathlib import Path

import psutil
import pytest
from loop_support import (
    FakeExecutor,
    ScriptedAgent,
    agent_channel,
    constant,
    killed_loop,
    make_loop,
    with_constants,
)

from autoresearch.agents import namespace, turn_cgroups
from autoresearch.agents.command_agent import CommandAgent
from autoresearch.evaluator import cgroups
from autoresearch.loop.environment import Environment
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.parallel import run_workers
from autoresearch.loop.settings import LoopError
from autoresearch.loop.trying import try_working_tree
from autoresearch.loop.workers import devices
from autoresearch.vocabulary import Status
from autoresearch.workspace.integrity import LOOP_OWN

PY = shlex.quote(sys.executable)
GIT = "git -c user.name=agent -c user.email=agent@example.com -c commit.gpgsign=false"


def set_lr(value: float) -> str:
    """A shell line that edits LR in train.py, as an agent's edit tool would."""
    code = (
        "import re, pathlib; p = pathlib.Path('train.py'); "
        f"p.write_text(re.sub(r'(?m)^LR = \\S+', 'LR = {value}', p.read_text()))"
    )
    return f"{PY} -c {shlex.quote(code)}"


def score(source: str) -> float:
    """Best at LR = 0.2; the baseline (LR 0.05) scores 1.0225 with no seed noise but a margin of 0.001."""
    return 1.0 + (constant(source, "LR") - 0.2) ** 2 + (0.0005 if constant(source, "SEED") == 43 else 0.0)


def state(ws) -> dict:
    """What the loop owns and must find again after the agent's turn."""
    return {
        "refs": ws.git.refs(),
        "head": (ws.git.git_dir / "HEAD").read_text(),
        "config": (ws.git.git_dir / "config").read_bytes(),
        "gitignore": (ws.root / ".gitignore").read_bytes(),
        "program": (ws.root / "program.md").read_bytes(),
    }


def take_turn(ws, tmp_path: Path, script: str) -> tuple[Experiment, dict]:
    """The baseline, then one turn of an agent running `script` in the workspace; the turn's ledger row. `$COMMITS`
    names the file where the script notes the commits it makes (`agent_channel`)."""
    loop = make_loop(ws, FakeExecutor(score), baseline_runs=2)
    loop.baseline()
    before = state(ws)
    path = tmp_path / "agent.sh"
    path.write_text(f"set -e\nCOMMITS={shlex.quote(str(agent_channel(ws) / 'commits'))}\n{script}\n")
    loop.run(CommandAgent(f"sh {shlex.quote(str(path))}", timeout_s=60), max_experiments=1)  # it returns
    return loop.ledger.all()[-1], before


def turn_stops_the_loop(ws, tmp_path: Path, script: str, match: str) -> None:
    """The baseline, then one turn of an agent running `script`, the loop watching the folders of PATH as `run` does
    (`Environment.of_runs`): the turn must stop the loop with a LoopError matching `match`."""
    environment = Environment.of_runs(os.environ, ws.root)
    loop = make_loop(ws, FakeExecutor(score), baseline_runs=2, environment=environment)
    loop.baseline()
    path = tmp_path / "agent.sh"
    path.write_text(f"set -e\n{script}\n")
    with pytest.raises(LoopError, match=match):
        loop.run(CommandAgent(f"sh {shlex.quote(str(path))}", timeout_s=60), max_experiments=1)


def assert_the_loop_owns_the_workspace(ws, exp: Experiment, before: dict) -> None:
    """HEAD and the branch on the best (which the loop's own commit may now be), nothing else moved, a clean
    tree, no commit of the agent's reachable from any ref, reflog or ORIG_HEAD, and the next start accepts it."""
    git = ws.git
    loop = make_loop(ws, FakeExecutor(score))
    best = loop.best()
    assert git.head() == best.commit
    if exp.status == Status.KEEP:
        assert best.id == exp.id and git.message(exp.commit).startswith(f"exp {exp.id}: ")
        assert git.parent(exp.commit) == exp.parent
    expected_refs = dict(before["refs"])
    branch = before["head"].removeprefix("ref: ").strip()
    expected_refs[branch] = best.commit
    if exp.status == Status.DISCARD:
        expected_refs[f"refs/autoresearch/discarded/{exp.id}"] = exp.commit
    assert git.refs() == expected_refs
    assert (git.git_dir / "HEAD").read_text() == before["head"]
    assert (git.git_dir / "config").read_bytes() == before["config"]
    assert (ws.root / ".gitignore").read_bytes() == before["gitignore"]
    assert (ws.root / "program.md").read_bytes() == before["program"]
    assert git.status() == {} and git.untracked(LOOP_OWN) == []
    assert ws.read_train_py() == best.source
    commits_file = agent_channel(ws) / "commits"  # take_turn's $COMMITS
    foreign = set(commits_file.read_text().split()) if commits_file.exists() else set()
    visible = set(git("rev-list", "--all", "--reflog").split()) | {git("rev-parse", "ORIG_HEAD", check=False).strip()}
    assert not foreign & visible, "a commit of the agent's is still reachable"
    assert loop.recover() is None
    loop.check_clean()


def quarantined(ws, name: str) -> list[Path]:
    return sorted((ws.state / "quarantine").rglob(name))


@pytest.mark.slow
def test_a_commit_made_by_the_agent_is_taken_apart_and_its_train_py_is_the_proposal(workspace, tmp_path):
    exp, before = take_turn(
        workspace,
        tmp_path,
        f"""{set_lr(0.2)}
{GIT} commit -q -am "aider: LR 0.2"
git rev-parse HEAD >> "$COMMITS"
echo "Commit $(git rev-parse --short HEAD) aider: LR 0.2"
echo "LR 0.05 -> 0.2" """,
    )
    assert exp.status == Status.KEEP and constant(exp.source, "LR") == 0.2 and exp.description == "LR 0.05 -> 0.2"
    assert "put back after the agent" in exp.reason and "moved refs/heads/autoresearch/test" in exp.reason
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow
def test_a_committed_proposal_that_loses_is_discarded_and_the_agents_commit_is_gone(workspace, tmp_path):
    exp, before = take_turn(
        workspace, tmp_path, f'{set_lr(0.9)}\n{GIT} commit -q -am "LR 0.9"\ngit rev-parse HEAD >> "$COMMITS"'
    )
    assert exp.status == Status.DISCARD and constant(workspace.git.show(exp.commit, "train.py"), "LR") == 0.9
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow
def test_history_files_a_cache_and_gitignore_lines_are_quarantined_and_the_edit_is_judged(workspace, tmp_path):
    exp, before = take_turn(
        workspace,
        tmp_path,
        f"""{set_lr(0.2)}
printf '# aider chat started\\n' > .aider.chat.history.md
mkdir -p .aider.tags.cache.v4 && printf 'x' > .aider.tags.cache.v4/cache.db
printf '.aider*\\n.env\\n' >> .gitignore
echo "LR 0.2" """,
    )
    assert exp.status == Status.KEEP
    for name in (".aider.chat.history.md", "cache.db"):
        assert name in exp.reason and len(quarantined(workspace, name)) == 1
    assert "lines added to .gitignore" in exp.reason and "quarantine" in exp.reason
    assert quarantined(workspace, ".gitignore")[0].read_text().endswith(".aider*\n.env\n")
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow
def test_a_new_file_the_agent_staged_is_quarantined(workspace, tmp_path):
    exp, before = take_turn(
        workspace,
        tmp_path,
        f"{set_lr(0.2)}\nmkdir -p notes && echo 'an idea' > notes/idea.md\ngit add notes/idea.md\necho 'LR 0.2'",
    )
    assert exp.status == Status.KEEP and "added notes/idea.md" in exp.reason and "the index" in exp.reason
    assert quarantined(workspace, "idea.md")[0].read_text() == "an idea\n"
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow
def test_a_git_identity_written_into_the_workspace_config_is_put_back(workspace, tmp_path):
    exp, before = take_turn(
        workspace,
        tmp_path,
        f"git config user.name 'aider (placeholder)'\ngit config user.email aider@example.com\n{set_lr(0.2)}\necho LR",
    )
    assert exp.status == Status.KEEP and ".git/config" in exp.reason
    assert "aider@example.com" in quarantined(workspace, "config")[0].read_text()
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow
def test_an_agent_that_exits_0_without_an_edit_has_its_output_recorded_as_the_reason(workspace, tmp_path):
    exp, before = take_turn(
        workspace,
        tmp_path,
        "echo 'litellm.APIConnectionError: connection refused' >&2\necho 'Retrying in 8.0 seconds...'\n"
        "echo '> try a higher LR' > .aider.chat.history.md\necho 'The API is down; no edit made.'",
    )
    assert exp.status == Status.CRASH and exp.kind == "proposal"
    assert "left train.py unchanged" in exp.reason
    assert "The API is down; no edit made." in exp.reason and "connection refused" in exp.reason
    assert "put back after the agent: added .aider.chat.history.md" in exp.reason
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow
def test_two_commits_on_a_new_branch_are_taken_apart(workspace, tmp_path):
    exp, before = take_turn(
        workspace,
        tmp_path,
        f"""git checkout -q -b aider/idea
{set_lr(0.9)}
{GIT} commit -q -am "first try"
git rev-parse HEAD >> "$COMMITS"
{set_lr(0.2)}
{GIT} commit -q -am "second try"
git rev-parse HEAD >> "$COMMITS"
git branch aider/keep-this
echo "LR 0.2 after two tries" """,
    )
    assert exp.status == Status.KEEP and constant(exp.source, "LR") == 0.2
    assert "created refs/heads/aider/idea" in exp.reason and ".git/HEAD" in exp.reason
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow
def test_a_commit_that_also_edits_another_tracked_file_is_rejected_and_taken_apart(workspace, tmp_path):
    exp, before = take_turn(
        workspace,
        tmp_path,
        f"""{set_lr(0.2)}
echo 'Always use LR 0.2.' >> program.md
{GIT} commit -q -am "LR 0.2 and a rule"
git rev-parse HEAD >> "$COMMITS"
echo "LR 0.2" """,
    )
    assert exp.status == Status.CRASH and "edited files other than train.py: changed program.md" in exp.reason
    assert exp.reason.count("program.md") == 1  # the edit rejects it; the commit is put back, not held against it
    assert quarantined(workspace, "program.md")[0].read_text().endswith("Always use LR 0.2.\n")
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.parametrize("shell", [False, True])
def test_program_md_edited_during_a_turn_rejects_the_proposal_of_an_agent_with_a_shell_only(workspace, shell):
    """An agent without a shell (an LLM's API, tune) runs no program and writes no file: its turn is not watched. The
    person's edit of program.md while it thinks (an API call takes a minute) stays theirs, and its proposal is
    trained. An agent with a shell could have made that edit itself: its proposal is rejected and the edit put
    aside."""

    def edited_meanwhile(context):
        (workspace.root / "program.md").write_text("Try a larger batch next.\n")
        return "LR 0.2", with_constants(context.train_py, LR=0.2)

    agent = ScriptedAgent([edited_meanwhile])
    agent.shell = shell
    loop = make_loop(workspace, FakeExecutor(score), baseline_runs=2)
    loop.baseline()
    exp = loop.step(agent)
    if shell:
        assert exp.status == Status.CRASH and "edited files other than train.py: changed program.md" in exp.reason
        assert quarantined(workspace, "program.md")[0].read_text() == "Try a larger batch next.\n"
    else:
        assert exp.status == Status.KEEP and constant(exp.source, "LR") == 0.2
        assert (workspace.root / "program.md").read_text() == "Try a larger batch next.\n"
        assert quarantined(workspace, "program.md") == []


@pytest.mark.slow
def test_a_stale_git_lock_left_by_a_killed_agent_does_not_stop_the_loop(workspace, tmp_path):
    exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\ngit add train.py\ntouch .git/index.lock\necho LR")
    assert exp.status == Status.KEEP and ".git/index.lock" in exp.reason
    assert not (workspace.git.git_dir / "index.lock").exists()
    assert_the_loop_owns_the_workspace(workspace, exp, before)


@pytest.mark.slow
def test_lines_removed_from_gitignore_reject_the_proposal(workspace, tmp_path):
    exp, before = take_turn(workspace, tmp_path, f"{set_lr(0.2)}\nprintf 'results.tsv\\n' > .gitignore\necho LR")
    assert exp.status == Status.CRASH and "edited files other than train.py: changed .gitignore" in exp.reason
    assert_the_loop_owns_the_workspace(workspace, exp, before)
    # .autoresearch/ was no longer ignored meanwhile: the loop's own files are still its own, where they were
    assert quarantined(workspace, "ledger.sqlite") == quarantined(workspace, "result.json") == []
    assert len(make_loop(workspace, FakeExecutor(score)).ledger.all()) == 2


def left_bundles(ws) -> dict[str, dict[str, str]]:
    """The bundles the starts after kills in turns kept (relative to the workspace) -> the refs each holds -> commit."""
    found = {}
    for bundle in sorted((ws.state / "left").glob("*/left.bundle")):
        lines = ws.git("bundle", "list-heads", str(bundle)).splitlines()
        found[os.path.relpath(bundle, ws.root)] = {ref: sha for sha, ref in (line.split(" ", 1) for line in lines)}
    return found


def kill_during_turn(ws, tmp_path: Path, script: str, pid_namespace: bool = True) -> None:
    """The loop (in a process of its own) SIGKILLed by its command agent, after `script`, in the middle of a turn
    made on the best; the agent runs on for a while, as a coding agent does when no one stops it. (The agent asks
    for the kill: in a PID namespace of its own it cannot see the loop to kill it itself.) Without `pid_namespace`,
    the turn has none, as where none can be made."""
    agent, asked = tmp_path / "agent.sh", agent_channel(ws) / "kill the loop"
    agent.write_text(f"set -e\n{script}\ntouch {shlex.quote(str(asked))}\nsleep 60\n")
    asked.unlink(missing_ok=True)
    killed_loop(
        ws,
        f"""
        import threading, time
        from autoresearch.agents import namespace
        from autoresearch.agents.command_agent import CommandAgent
        if not {pid_namespace}:
            namespace.pid_namespace = lambda: ()
        def killer():
            while not os.path.exists({str(asked)!r}):
                time.sleep(0.02)
            kill()
        threading.Thread(target=killer, daemon=True).start()
        loop = make_loop(ws, FakeExecutor(lambda source: 1.0), baseline_runs=2)
        loop.run(CommandAgent({f"sh {shlex.quote(str(agent))}"!r}, timeout_s=60), max_experiments=1)
        """,
    )


def running_in(folder: Path) -> list[psutil.Process]:
    """The processes whose working directory is `folder` (an agent's, and what it started)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.status() != psutil.STATUS_ZOMBIE and Path(process.cwd()) == folder.resolve():
                found.append(process)
    return found


def left_turn_groups() -> list[Path]:
    """The turns' outer groups of loops that no longer run, in every cgroup hierarchy this process is in (a loop run
    as root makes them there, or beside its cgroup on v2)."""
    found = []
    for _, own in cgroups.own_every_folder():
        pattern = re.compile(f"{turn_cgroups.outer_pattern()}(?:-{re.escape(own.name)})?")
        for folder in [*own.iterdir(), *own.parent.iterdir()] if own.is_dir() else []:
            if (named := pattern.fullmatch(folder.name)) and not psutil.pid_exists(int(named["pid"])):
                found.append(folder)
    return found


def until_none_run_in(folder: Path, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while left := running_in(folder):
        assert time.monotonic() < deadline, f"the agent still runs: {[p.cmdline() for p in left]}"
        time.sleep(0.05)


@pytest.mark.parametrize("next_start", ["run", "try"])
@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_a_loop_killed_during_the_agents_turn_is_put_back_on_the_next_start(workspace, tmp_path, next_start):
    """A SIGKILL (the OOM killer, a reboot) in the middle of a turn: the agent had committed its edit, added a file
    and written its identity into git's config, and it is still running. The next start kills it and puts back
    what it did, as the turn's end would have, keeping it in the quarantine; `run` puts the unfinished train.py
    aside too, while `try` judges it. What the person did meanwhile stays: program.md as they edited it, and the
    commit the branch was on, reachable under refs/autoresearch/left/. The turn has no PID namespace here: its first
    process died with the loop, what that started runs on until the next start kills it."""
    best = make_loop(workspace, FakeExecutor(score), baseline_runs=2).baseline()
    before = state(workspace)
    kill_during_turn(
        workspace,
        tmp_path,
        f"""{set_lr(0.2)}
{GIT} commit -q -am "exp 2: LR 0.2"
echo "half a thought" > notes.txt
printf 'results.tsv\n' > .gitignore
git config user.name agent""",
        pid_namespace=False,
    )
    agent_commit = workspace.git.head()
    assert agent_commit != best.commit and (workspace.root / "notes.txt").exists()  # as the kill left it
    assert running_in(workspace.root)  # the agent's script, sleeping
    (workspace.root / "program.md").write_text("Try a larger batch next.\n")  # the person, after the kill

    events = []
    loop = make_loop(workspace, FakeExecutor(score), events=events)
    if next_start == "run":
        loop.run(ScriptedAgent([]), max_experiments=0)
        assert workspace.read_train_py() == best.source
        assert constant(quarantined(workspace, "train.py")[0].read_text(), "LR") == 0.2
    else:
        exp = try_working_tree(loop, "LR 0.2")
        assert (exp.id, exp.status, constant(exp.source, "LR")) == (2, Status.KEEP, 0.2)
    assert any("killed an agent" in e for e in events)
    until_none_run_in(workspace.root)
    assert not left_turn_groups()  # a loop run as root left its turns' groups: this start removed them
    [told] = [e for e in events if "stopped during the agent's turn" in e]
    assert "added notes.txt" in told and "refs/heads/autoresearch/test" in told and ".git/config" in told
    [(bundle, heads)] = left_bundles(workspace).items()
    assert heads == {"refs/left/heads/autoresearch/test": agent_commit} and f"git fetch {bundle} " in told
    assert not workspace.git.refs("refs/autoresearch/left/")  # out of the object store the loop reads
    assert quarantined(workspace, "notes.txt")[0].read_text() == "half a thought\n"
    assert quarantined(workspace, "ledger.sqlite") == quarantined(workspace, "result.json") == []
    assert (workspace.git.git_dir / "config").read_bytes() == before["config"]
    assert (workspace.root / ".gitignore").read_bytes() == before["gitignore"]
    assert (workspace.root / "program.md").read_text() == "Try a larger batch next.\n"
    assert set(workspace.git.status()) == {"program.md"} and workspace.git.untracked(LOOP_OWN) == []
    assert workspace.git.head() == loop.best().commit and not (workspace.state / "turn.json").exists()


@pytest.mark.skipif(not namespace.pid_namespace(), reason="no PID namespace can be made here")
@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_an_agents_turn_dies_with_its_loop_killed_outright(workspace, tmp_path):
    """BROKE, fixed: a loop killed outright (the OOM killer; a supervisor's kill of its cgroup, which on cgroup v2 no
    longer holds a root loop's turns) left its agent's turn running, a coding agent spending your tokens and CPUs on
    a turn no loop would read, until the next start killed it, if there was one. Its first process now dies with the
    loop, and with it the turn's PID namespace, all the agent started in it."""
    make_loop(workspace, FakeExecutor(score), baseline_runs=2).baseline()
    kill_during_turn(workspace, tmp_path, "sleep 60 &")
    until_none_run_in(workspace.root)
    events = []
    make_loop(workspace, FakeExecutor(score), events=events).run(ScriptedAgent([]), max_experiments=0)
    assert not any("killed an agent" in e for e in events)  # none was left to kill
    assert not left_turn_groups()  # a loop run as root left its turns' groups: the start removed them


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_what_a_killed_agent_set_in_gits_config_runs_nothing_when_several_workers_start(workspace, tmp_path):
    """A filter the agent configured would run at every checkout: the workers' worktrees are made only after the
    workspace is put back."""
    make_loop(workspace, FakeExecutor(score), baseline_runs=2).baseline()
    ran = tmp_path / "the filter ran"
    kill_during_turn(
        workspace,
        tmp_path,
        f"""git config filter.evil.smudge "touch {shlex.quote(str(ran))}; cat"
echo "* filter=evil" > .git/info/attributes""",
    )
    loop = make_loop(workspace, FakeExecutor(score))
    run_workers(
        loop, ScriptedAgent([]), devices(None, 2), max_experiments=0, executor_for=lambda _: FakeExecutor(score)
    )
    assert not ran.exists() and "evil" not in (workspace.git.git_dir / "config").read_text()


def test_a_pid_file_naming_the_loops_own_group_or_no_group_leader_kills_nothing(workspace):
    """agent.pid is in the agent's reach: one that names the loop (or a process that leads no group) must not
    make every start kill the loop, or anything else."""
    from autoresearch.orphans import reap, write_pid_file

    pid_file = workspace.state / "agent.pid"
    for pid in (os.getpgrp(), os.getpid(), os.getppid()):  # the tests' own group's leader, themselves, their parent
        write_pid_file(pid_file, pid)
        assert not reap(pid_file)
    for text in ("0 0", "-1 0", "1 0", "12 x", "", "99999999999999999999 0"):  # 0: this group; -1, 1: init
        pid_file.write_text(text)
        assert not reap(pid_file)
    loop = make_loop(workspace, FakeExecutor(score))
    loop.recover_workspace()  # the loop is alive to go on
    assert not pid_file.exists()


@pytest.mark.parametrize("waited", [True, False])
@pytest.mark.slow
def test_an_agents_group_is_killed_even_once_its_leader_has_ended(workspace, waited):
    """The agent's shell died with the loop, its tool runs on in the group. Its end waited for by init, or not yet
    (BROKE, fixed: a zombie leader shows no environment, so no mark, and its group was left running; a container's
    init that reaps late or never leaves it so, and the turn's first process now dies with its loop)."""
    import subprocess

    from autoresearch.orphans import alive, marked, reap, write_pid_file

    leader = subprocess.Popen(
        ["sh", "-c", "sleep 60 & echo $!"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=marked(dict(os.environ)),  # as the loop starts an agent
    )
    pid_file = workspace.state / "agent.pid"
    write_pid_file(pid_file, leader.pid)
    tool = psutil.Process(int(leader.stdout.readline()))
    if waited:
        leader.wait()  # gone: no process has its pid, the group lives on in `sleep`
    else:
        while psutil.Process(leader.pid).status() != psutil.STATUS_ZOMBIE:
            time.sleep(0.01)
    named = pid_file.read_text()
    pid_file.write_text(f"{leader.pid} {time.time() + 60}")  # a group older than the leader named: not that one
    assert not reap(pid_file) and alive(tool)
    pid_file.write_text(named)
    assert reap(pid_file)
    # Killed: `reap` waits for that. Not `tool.wait()`, which waits until its pid is gone: was a CI flake where the
    # container's init, its parent once the leader was waited for, reaped it later than the test waited.
    assert not alive(tool)
    leader.wait()


@pytest.mark.parametrize("leader", ["runs", "has ended"])
def test_a_pid_file_naming_a_process_group_the_loop_did_not_start_kills_nothing(workspace, leader):
    """BROKE, fixed: agent.pid (and a run's pid file) is in the agent's reach, and the next start killed the group it
    named once its leader's start time matched and it led its group: an agent that sees the machine's processes
    (no PID namespace, or through a way out) named one of the user's (a tmux server, an editor) and the next start
    killed it. Now only a group the loop started (its leader's environment, or with the leader gone one of its
    processes', carries the loop's mark) is killed."""
    import subprocess

    from autoresearch.orphans import MARK, reap, write_pid_file

    users = {k: v for k, v in os.environ.items() if k != MARK}  # started by the user, not by a loop
    script = "sleep 60 & echo $!" + ("; wait" if leader == "runs" else "")
    shell = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True, env=users)
    tool = psutil.Process(int(shell.stdout.readline()))
    pid_file = workspace.state / "agent.pid"
    try:
        write_pid_file(pid_file, shell.pid)  # its true pid and start time, as an agent that sees it reads them
        if leader == "has ended":
            shell.wait()
        assert not reap(pid_file)
        time.sleep(0.1)
        assert tool.is_running() and tool.status() != psutil.STATUS_ZOMBIE
        assert leader == "has ended" or shell.poll() is None
    finally:
        os.killpg(shell.pid, 9)
        shell.wait()


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_rebuild_ledger_after_a_kill_during_a_turn_takes_no_commit_of_the_agents_for_an_experiment(workspace, tmp_path):
    """The agent committed with a message like the loop's own ("exp 2: ..."); rebuild-ledger reads the branch."""
    from autoresearch.cli import main

    best = make_loop(workspace, FakeExecutor(score), baseline_runs=2).baseline()
    kill_during_turn(workspace, tmp_path, f'{set_lr(0.2)}\n{GIT} commit -q -am "exp 2: LR 0.2"')
    assert main(["rebuild-ledger", "--force", "--workspace", str(workspace.root)]) == 0
    rows = make_loop(workspace, FakeExecutor(score)).ledger.all()
    assert [(e.id, e.status) for e in rows] == [(1, Status.KEEP)] and workspace.git.head() == best.commit
    assert workspace.read_train_py() == best.source


@pytest.mark.slow
def test_two_recoveries_in_the_same_second_keep_both(workspace, tmp_path, monkeypatch):
    """Each start that puts a turn back has a quarantine folder, and refs, of its own."""
    make_loop(workspace, FakeExecutor(score), baseline_runs=2).baseline()
    monkeypatch.setattr(time, "strftime", lambda *_: "20261201-120000")
    commits = []
    for lr in (0.2, 0.3):
        kill_during_turn(workspace, tmp_path, f'{set_lr(lr)}\n{GIT} commit -q -am "LR {lr}"')
        commits.append(workspace.git.head())
        make_loop(workspace, FakeExecutor(score)).run(ScriptedAgent([]), max_experiments=0)
    assert sorted(c for heads in left_bundles(workspace).values() for c in heads.values()) == sorted(commits)
    assert sorted(constant(p.read_text(), "LR") for p in quarantined(workspace, "train.py")) == [0.2, 0.3]


@pytest.mark.slow  # seconds: the fast subset stays under a minute
def test_several_workers_killed_between_the_agents_turn_and_its_row_put_the_proposal_aside(workspace):
    """The driver of several workers writes the best's train.py back only after the proposal's row: killed before,
    the next start finds the turn to put back, and says so."""
    make_loop(workspace, FakeExecutor(score), baseline_runs=2).baseline()
    killed_loop(
        workspace,
        f"""
        from autoresearch.agents.command_agent import CommandAgent
        from autoresearch.loop.ledger import Ledger
        from autoresearch.loop.scheduler import Scheduler
        from autoresearch.loop.workers import devices, make_workers
        from autoresearch.vocabulary import Kind
        insert = Ledger.insert
        def dying(self, exp):
            if exp.kind == Kind.EXPERIMENT:
                kill()
            insert(self, exp)
        Ledger.insert = dying
        loop = make_loop(ws, FakeExecutor(lambda source: 1.0), baseline_runs=2)
        workers = make_workers(loop, devices(None, 2, cores=2), lambda device: FakeExecutor(lambda source: 1.0))
        Scheduler(loop, workers).run(CommandAgent({set_lr(0.2) + " && echo LR 0.2"!r}), max_experiments=1)
        """,
    )
    events = []
    make_loop(workspace, FakeExecutor(score), events=events).run(ScriptedAgent([]), max_experiments=0)
    assert any("put back train.py (its unfinished edit, or yours since)" in e for e in events)
    assert constant(quarantined(workspace, "train.py")[0].read_text(), "LR") == 0.2
    assert len(make_loop(workspace, FakeExecutor(score)).ledger.all()) == 1 and workspace.git.status() == {}


@pytest.mark.usefixtures("agent_unhidden")
def test_an_edit_planted_where_try_holds_its_own_rejects_the_proposal(workspace, tmp_path):
    """.autoresearch/held-train.py is the loop's: a file there comes back into train.py at the next start, as the
    edit a stopped `try` was given. One an agent wrote is taken away and held against it."""
    exp, before = take_turn(
        workspace, tmp_path, f"{set_lr(0.2)}\necho 'LR = 0.9' > .autoresearch/held-train.py\necho LR 0.2"
    )
    assert exp.status == Status.CRASH and "added .autoresearch/held-train.py" in exp.reason
    assert not (workspace.state / "held-train.py").exists() and quarantined(workspace, "held-train.py")
    assert_the_loop_owns_the_workspace(workspace, exp, before)
