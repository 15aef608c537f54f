"""A turn cut short by a kill: what the next start puts back of git's objects, and what it keeps of the person's.

The third red team of the objects a step leaves (helper 86) wrote these against the recovery of 9c929d4: each failed
there. The turn's Watch keeps its snapshot as the loop does, the test acts as the agent (and as the person after the
kill), and the next start is a `run` with nothing to ask.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time

import pytest
from loop_support import FakeExecutor, ScriptedAgent, make_loop
from test_agent_turn import left_bundles, score
from test_red_team_agent import PAD

from autoresearch.loop import watch as watches
from autoresearch.loop.recovery import TURN_SNAPSHOT
from autoresearch.loop.settings import LoopError

pytestmark = pytest.mark.slow  # seconds each

GIT = ["git", "-c", "user.name=p", "-c", "user.email=p@example.com", "-c", "commit.gpgsign=false"]


def sh(ws, script: str) -> str:
    """A shell `script` in the workspace: the agent during its turn, or the person after the kill."""
    return subprocess.run(["sh", "-ec", script], cwd=ws.root, check=True, capture_output=True, text=True).stdout


def turn_begins(ws, tmp_path) -> None:
    """The baseline, then a turn's Watch keeping its snapshot for the next start, as the loop does; the loop is then
    killed (nothing after it runs)."""
    make_loop(ws, FakeExecutor(score), baseline_runs=2).baseline()
    loop = make_loop(ws, FakeExecutor(score))
    watches.Watch(ws.git, loop.ledger, tmp_path / "q", agent=True, keep=ws.state / TURN_SNAPSHOT)


def next_start(ws) -> list[str]:
    said: list[str] = []
    make_loop(ws, FakeExecutor(score), events=said).run(ScriptedAgent([]), max_experiments=0)
    return said


def commit_of_the_persons(ws, text: str = "a note of the person's\n") -> str:
    (ws.root / "notes.md").write_text(text)
    sh(ws, f"{' '.join(GIT)} add -f notes.md && {' '.join(GIT)} commit -qm 'the person, after the kill'")
    return ws.git("rev-parse", "HEAD").strip()


def kept(ws) -> list[str]:
    return [c for heads in left_bundles(ws).values() for c in heads.values()]


@pytest.mark.parametrize("repack", ["commit", "recompress"])
def test_a_history_packed_before_the_turn_survives_a_repack_before_the_kill(workspace, tmp_path, repack):
    """The history in a pack (as `git gc`, or the loop's own `pack`, leaves it). The agent commits and runs `git gc`
    (or only repacks with another compression: no ref moved), which writes one new pack of everything and deletes the
    old one; the loop is killed. The next start takes the new pack away and writes what the repository lacks loose,
    then (set_aside_new) took away every loose object its listing lacked: the history's own, packed before, too. What
    the refs of the snapshot reach stays."""
    workspace.git("repack", "-q", "-a", "-d")
    workspace.git("prune-packed")
    turn_begins(workspace, tmp_path)
    if repack == "commit":
        commit_of_the_persons(workspace)
        sh(workspace, "git gc -q")
    else:
        sh(workspace, "git -c pack.compression=0 repack -q -a -d -f")
    try:
        next_start(workspace)
    finally:
        log = subprocess.run(["git", "log", "--oneline", "-3"], cwd=workspace.root, capture_output=True, text=True)
        assert log.returncode == 0, log.stderr
    workspace.git("fsck", "--strict")


def test_a_commit_the_person_made_on_a_detached_head_after_the_kill_is_kept(workspace, tmp_path):
    """BROKE, fixed: after the kill the person checks out the best detached (or finds the agent left HEAD so) and
    commits there. The bundle is made of `git for-each-ref`'s refs, which never list HEAD: the commit is in no bundle,
    HEAD is put back to the branch, and its objects were taken away. A HEAD left detached on a commit no ref names is
    bundled too."""
    turn_begins(workspace, tmp_path)
    sh(workspace, "git checkout -q --detach")
    mine = commit_of_the_persons(workspace)
    said = next_start(workspace)
    assert mine in kept(workspace), said


def test_a_commit_of_the_persons_is_kept_where_the_agent_left_a_ref_to_a_broken_commit(workspace, tmp_path):
    """BROKE, fixed: the agent leaves a ref to a commit whose tree it never wrote (`git hash-object -t commit`); the
    person commits on the branch after the kill. `git bundle create` of both refs fails (`check=False`): no bundle, no
    word of it, and the person's commit was taken away with the agent's objects. Each ref goes in if git can walk it."""
    turn_begins(workspace, tmp_path)
    tree = "1" * 40
    commit = f"tree {tree}\\nauthor a <a@a> 0 +0000\\ncommitter a <a@a> 0 +0000\\n\\nbroken\\n"
    sh(workspace, f"git update-ref refs/heads/wip $(printf '{commit}' | git hash-object -t commit -w --stdin)")
    mine = commit_of_the_persons(workspace)
    said = next_start(workspace)
    assert mine in kept(workspace), said


def test_a_commit_of_the_persons_is_kept_where_the_agent_left_a_ref_that_makes_the_branch_ambiguous(
    workspace, tmp_path
):
    """BROKE, fixed: the agent leaves refs/heads/refs/heads/<branch>: `git bundle create` then skipped the branch's own
    ref, which `git rev-parse` finds ambiguous (bundle.c: dwim_ref != 1), and writes the bundle without it, exiting 0.
    The start said the commits were kept in the bundle without the person's commit. The bundle is made in a repository
    of its own, every ref under refs/left/."""
    turn_begins(workspace, tmp_path)
    branch = workspace.git("symbolic-ref", "HEAD").strip()
    sh(workspace, f"git update-ref refs/heads/{branch} HEAD")
    mine = commit_of_the_persons(workspace)
    said = next_start(workspace)
    assert mine in kept(workspace), (said, left_bundles(workspace))


@pytest.mark.parametrize("plant", ["link", "file"])
def test_a_left_folder_the_agent_planted_neither_sends_the_bundle_outside_nor_stops_the_start(
    workspace, tmp_path, plant
):
    """BROKE, fixed: the agent (where its namespace hides nothing: agent_unhidden) makes .autoresearch/left a link to a
    folder outside the workspace, or a file, and commits; the loop is killed. The start writes the bundle through the
    link (`left.parent.mkdir(exist_ok=True)` followed it), or stopped with a FileExistsError traceback at every start.
    The folder is made again as the quarantine's is."""
    turn_begins(workspace, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    left = workspace.state / "left"
    if plant == "link":
        left.symlink_to(outside)
    else:
        left.write_text("")
    commit_of_the_persons(workspace)
    next_start(workspace)
    assert not list(outside.iterdir())
    assert kept(workspace)


@pytest.mark.parametrize(
    "how",
    [
        "git gc -q --prune=now",
        "git repack -q -adf && git prune-packed",
        "git pack-refs --all",
        "git reflog expire --expire=now --all && git prune --expire=now",
        "git commit-graph write --reachable",
        "git repack -q -d && git multi-pack-index write && git prune-packed",
        "git -c gc.cruftPacks=true gc -q --prune=now",
        "git repack -q -adb && git prune-packed",
    ],
)
def test_an_innocent_kill_is_not_refused(workspace, tmp_path, how):
    """Held: what a tool may run on the repository before a kill (the history loose, as a young workspace has it)
    neither makes the next start refuse nor leaves the history short."""
    (workspace.root / "notes.md").write_text("the person's, untracked\n")  # a blob the snapshot stores
    turn_begins(workspace, tmp_path)
    sh(workspace, how)
    next_start(workspace)
    workspace.git("fsck", "--strict")
    assert (workspace.root / "notes.md").read_text() == "the person's, untracked\n"


def test_a_file_of_the_persons_the_agent_changed_and_whose_stored_blob_it_pruned_is_not_said_put_back(
    workspace, tmp_path
):
    """The person's untracked notes.md: the turn's snapshot stores its blob (unreachable, loose). The agent edits it
    and runs `git prune --expire=now` (or `git gc --prune=now`), deleting that blob; the loop is killed. The start
    moves the edit into the quarantine and cannot write the file back (its bytes died with the loop, the blob is
    gone). It said "put back changed notes.md"; it says it could not."""
    (workspace.root / "notes.md").write_text("the person's, untracked\n")
    turn_begins(workspace, tmp_path)
    sh(workspace, "echo 'the agent was here' > notes.md && git prune --expire=now")
    said = next_start(workspace)
    [told] = [line for line in said if "stopped during the agent's turn" in line]
    assert "not notes.md: it could not be written back" in told and "changed notes.md" not in told, told


FORGE_LOOSE = """
B=$(git rev-parse HEAD:train.py); F=.git/objects/$(echo $B | cut -c1-2)/$(echo $B | cut -c3-)
chmod u+w $F && printf 'forged' | {py} -c 'import sys, zlib; sys.stdout.buffer.write(zlib.compress(b"forged"))' > $F
"""


def test_a_refusal_after_the_kill_names_the_bundle_that_holds_the_persons_commit(workspace, tmp_path):
    """The agent rewrote an object of the history (loose) before the kill; the person committed after it. The start
    refuses (right) with 'restore .git from a copy, or start a new workspace'; no bundle can hold the commit (git
    reads the forged object to write it), so following the hint lost it. The refusal leaves .git as it is, the commit
    in it, and the hint says to keep it first."""
    turn_begins(workspace, tmp_path)
    sh(workspace, FORGE_LOOSE.format(py=sys.executable))
    mine = commit_of_the_persons(workspace)
    with pytest.raises(LoopError, match="not what they were") as raised:
        next_start(workspace)
    assert "keep what you committed since the kill (`git log --all`)" in raised.value.hint
    assert workspace.git("cat-file", "-t", mine).strip() == "commit"  # still in .git: nothing was put back


@pytest.mark.parametrize(
    "after",
    [
        "git symbolic-ref refs/heads/alias refs/heads/$B",  # a symbolic ref beside the branch
        "git tag -a -m t v1 && git tag light",  # tags, annotated and not
        "git branch other && git checkout -q other",  # two refs, HEAD on the new one
        "git branch -q side && git update-ref -d refs/heads/$B && git checkout -q side",  # the branch deleted
        "git stash -q -u || true",  # refs/stash
    ],
)
def test_held_a_commit_of_the_persons_after_the_kill_is_in_the_bundle(workspace, tmp_path, after):
    """Held: the person's commit after the kill, with a symbolic ref, tags, two refs, the branch deleted: out of the
    store, and the fetch the message gives brings it back."""
    turn_begins(workspace, tmp_path)
    mine = commit_of_the_persons(workspace)
    branch = workspace.git("symbolic-ref", "--short", "HEAD").strip()
    sh(workspace, f"B={branch}; {after}")
    said = next_start(workspace)
    assert workspace.git("cat-file", "-t", mine, check=False).strip() != "commit", said  # out of the store
    [bundle] = left_bundles(workspace)
    sh(workspace, f"git fetch -q {bundle} 'refs/left/*:refs/left/*'")
    assert workspace.git("cat-file", "-t", mine).strip() == "commit"


def test_an_object_of_the_history_padded_before_a_kill_is_not_held_in_memory(workspace, tmp_path):
    """BROKE, fixed (a review of the fixes above): after a kill, an object of the history whose file changed was
    checked for what it holds alone; written again padded to 60 MB, whole, it stayed, and every later step held it in
    memory. A file larger than zlib could make of it is not the object git wrote: taken away, the history misses it,
    and the start refuses, as for any other rewrite."""
    turn_begins(workspace, tmp_path)
    subprocess.run([sys.executable, "-c", PAD, "HEAD:train.py", "12"], cwd=workspace.root, check=True)
    with pytest.raises(LoopError, match="not what they were"):
        next_start(workspace)


def _start_unwedged(ws, fifo) -> tuple[bool, list]:
    """The next start in a thread; whether it was still waiting after 30 s. A FIFO's reader is then given an end of
    file (an opened and closed writer) until it finishes, so that no git process is left waiting."""
    done: list = []

    def start():
        try:
            done.append(next_start(ws))
        except BaseException as exc:
            done.append(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(30)
    wedged = thread.is_alive()
    deadline = time.monotonic() + 60
    while thread.is_alive() and time.monotonic() < deadline:
        for path in fifo:
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(0.2)
    return wedged, done


@pytest.mark.parametrize("where", ["alternates", "head commit"])
def test_a_fifo_the_agent_left_in_the_object_store_does_not_wedge_the_start_after_a_kill(workspace, tmp_path, where):
    """BROKE, fixed: the agent replaces .git/objects/info/alternates (or the loose file of the commit HEAD is on) with a
    FIFO, and the loop is killed. A normal turn's check puts .git's files back (and takes a FIFO out of .git/objects)
    before any git command; after a kill, put_back_left runs `git rev-parse HEAD^{commit}` (and, with a ref moved,
    `rev-list`/`bundle` in a repository whose alternates chain to the workspace's) first: git opens the FIFO and waits
    for a writer for ever, at every start."""
    turn_begins(workspace, tmp_path)
    if where == "alternates":
        fifo = workspace.git.git_dir / "objects" / "info" / "alternates"
        fifo.parent.mkdir(exist_ok=True)
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    else:
        head = workspace.git("rev-parse", "HEAD").strip()
        fifo = workspace.git.git_dir / "objects" / head[:2] / head[2:]
        assert fifo.is_file(), "the baseline's commit is loose"
        fifo.chmod(0o644)
        fifo.unlink()
        os.mkfifo(fifo)
    wedged, _ = _start_unwedged(workspace, [fifo])
    assert not wedged, "the start waited on the FIFO"


def test_a_padded_loose_copy_of_a_packed_history_object_does_not_stay_after_a_kill(workspace, tmp_path):
    """BROKE, fixed: the history packed (as the loop's own `pack` leaves it). The agent recompresses the pack (innocent:
    the start accepts it), then adds a loose copy of the best's train.py blob padded to 60 MB; the loop is killed. The
    start took the new pack away and wrote what the repository lacked loose (not the blob: a copy was there), then kept
    every loose object of the history whatever its file, and every later step read its 60 MB into memory. An object of
    the history whose file is larger than git would write is written again."""
    workspace.git("repack", "-q", "-a", "-d")
    workspace.git("prune-packed")
    turn_begins(workspace, tmp_path)
    blob = workspace.git("rev-parse", "HEAD:train.py").strip()
    path = workspace.git.git_dir / "objects" / blob[:2] / blob[2:]
    assert not path.exists(), "the blob is packed"
    sh(workspace, "git -c pack.compression=0 repack -q -a -d -f")
    subprocess.run([sys.executable, "-c", PAD, "HEAD:train.py", "12"], cwd=workspace.root, check=True)
    try:
        next_start(workspace)
    except Exception:  # a refusal would do too: then nothing of it is held
        return
    workspace.git("fsck", "--strict")
    assert not path.exists() or path.stat().st_size < 1 << 20, f"{path.stat().st_size} bytes stay in .git/objects"


def test_a_commit_the_person_made_in_a_detached_worktree_after_the_kill_is_kept(workspace, tmp_path):
    """BROKE, fixed: after the kill the person adds a worktree (detached, as `git worktree add --detach` makes it) and
    commits there. Only the main HEAD is looked at: the worktree's HEAD names the commit, no ref does, it goes into no
    bundle, and its objects are taken away with the agent's (loose files in the quarantine, pruned with it)."""
    turn_begins(workspace, tmp_path)
    wt = tmp_path / "wt"
    sh(workspace, f"git worktree add -q --detach {wt}")
    (wt / "notes.md").write_text("the person's, in a worktree\n")
    git = "git -c user.name=p -c user.email=p@example.com -c commit.gpgsign=false"
    subprocess.run(
        ["sh", "-ec", f"{git} add -f notes.md && {git} commit -qm 'the person, after the kill'"], cwd=wt, check=True
    )
    mine = subprocess.run(["git", "rev-parse", "HEAD"], cwd=wt, capture_output=True, text=True).stdout.strip()
    said = next_start(workspace)
    reachable = workspace.git("cat-file", "-t", mine, check=False).strip() == "commit"
    assert reachable or mine in kept(workspace), said


def test_held_a_commit_of_the_persons_after_the_kill_is_kept_with_the_agents_alternates_changed(workspace, tmp_path):
    """Held? The agent points .git/objects/info/alternates at a repository of its own, which holds an object of the
    same name as nothing, then the person commits: the bundle (made through the chain of alternates) holds it."""
    turn_begins(workspace, tmp_path)
    other = tmp_path / "other"
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    (workspace.git.git_dir / "objects" / "info" / "alternates").write_text(f"{other}/.git/objects\n")
    mine = commit_of_the_persons(workspace)
    said = next_start(workspace)
    assert mine in kept(workspace), said
