"""The command agent runs real shell scripts: an edit, a failure, a hang killed with its children, no change."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

import pytest
from loop_support import peak_growth

from autoresearch.agents import namespace
from autoresearch.agents.base import Context, ProposalError
from autoresearch.agents.command_agent import MAX_OUTPUT_BYTES, PROMPT_ENV, CommandAgent
from autoresearch.agents.namespace import DECODE, pid_namespace, with_hidden

TRAIN_PY = resources.files("autoresearch.workspace").joinpath("templates", "train.py").read_text()
PY = shlex.quote(sys.executable)
EDIT = f"""{PY} - <<'EOF'
from pathlib import Path
p = Path("train.py")
p.write_text(p.read_text().replace("DEPTH = 8 ", "DEPTH = 10 "))
EOF"""


@pytest.fixture
def context(tmp_path: Path) -> Context:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "train.py").write_text(TRAIN_PY)
    return Context(workspace, "Try deeper models. (program marker 51c)", TRAIN_PY, 0.99, 0.001, [], "boom")


def agent(tmp_path: Path, script: str, timeout_s: float = 20.0) -> CommandAgent:
    path = tmp_path / "agent.sh"
    path.write_text("set -e\n" + script + "\n")
    return CommandAgent(f"sh {shlex.quote(str(path))}", timeout_s=timeout_s)


@pytest.mark.slow  # over half a second: the fast subset stays under a minute
def test_script_that_edits_train_py_gives_its_source_and_last_line(tmp_path: Path, context: Context) -> None:
    script = f"""cat > stdin.txt
cp "${PROMPT_ENV}" prompt_copy.md
{EDIT}
echo "thinking about depth..."
echo "Deeper model: DEPTH 8 -> 10"
echo
"""
    proposal = agent(tmp_path, script).propose(context)
    ws = context.workspace
    assert proposal.description == "Deeper model: DEPTH 8 -> 10"
    assert proposal.source == TRAIN_PY.replace("DEPTH = 8 ", "DEPTH = 10 ") == (ws / "train.py").read_text()
    prompt = (ws / ".autoresearch" / "prompt.md").read_text()
    assert (ws / "stdin.txt").read_text() == prompt == (ws / "prompt_copy.md").read_text()
    assert "program marker 51c" in prompt and "DEPTH = 8" in prompt and "last line of your standard output" in prompt
    assert proposal.usage.cost_usd is None or proposal.usage.cost_usd == 0


@pytest.mark.slow
def test_non_zero_exit_is_a_proposal_error_with_the_stderr_tail(tmp_path: Path, context: Context) -> None:
    script = "echo 'working' ; echo 'error: model quota exhausted' >&2 ; exit 3"
    with pytest.raises(ProposalError, match=r"(?s)status 3.*model quota exhausted"):
        agent(tmp_path, script).propose(context)


@pytest.mark.slow  # over a second: the fast subset stays under a minute
def test_a_turn_that_prints_without_end_has_its_last_line_read_and_holds_no_more_of_the_loops_memory(
    tmp_path: Path, context: Context
) -> None:
    """BROKE, fixed: the loop kept all a turn printed, and a turn that printed without end filled its memory (the
    kernel then kills the biggest process: the loop). It keeps the end of each stream, MAX_OUTPUT_BYTES."""
    flood = "head -c 400000000 /dev/zero | tr '\\0' x; head -c 400000000 /dev/zero | tr '\\0' y >&2"
    with peak_growth() as grown:
        proposal = agent(tmp_path, f"{flood}\n{EDIT}\necho\necho 'Deeper model: DEPTH 8 -> 10'").propose(context)
    assert proposal.description == "Deeper model: DEPTH 8 -> 10"
    assert MAX_OUTPUT_BYTES <= 16 << 20 and grown[0] < 200 << 20, grown[0]  # of 800 MB printed, all kept before


@pytest.mark.slow
def test_a_turn_that_reads_none_of_its_long_prompt_still_ends(tmp_path: Path, context: Context) -> None:
    long = dataclasses.replace(context, program=context.program + "x" * (4 << 20))  # far past a pipe's 64 KiB
    proposal = agent(tmp_path, f"{EDIT}\necho 'Deeper model: DEPTH 8 -> 10'", timeout_s=20).propose(long)
    assert proposal.description == "Deeper model: DEPTH 8 -> 10"


@pytest.mark.slow
def test_a_hanging_command_is_killed_with_its_whole_process_group(tmp_path: Path, context: Context) -> None:
    marker = f"autoresearch-hanging-child-{os.getpid()}-{time.monotonic_ns()}"  # found from outside its namespace
    script = f"sh -c 'sleep 300; :' {marker} &\necho 'editing train.py'\necho 'still thinking' >&2\nsleep 300"
    start = time.monotonic()
    said = r"(?s)did not finish within 1 s.*\[stdout\] editing train.py\n\[stderr\] still thinking"
    with pytest.raises(ProposalError, match=said):  # what it was doing, from either stream
        agent(tmp_path, script, timeout_s=1).propose(context)
    assert time.monotonic() - start < 10
    deadline = time.monotonic() + 5
    while _with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _with_marker(marker)


@pytest.mark.slow  # over half a second: the fast subset stays under a minute
def test_train_py_left_unchanged_is_a_proposal_error(tmp_path: Path, context: Context) -> None:
    with pytest.raises(ProposalError, match="unchanged"):
        agent(tmp_path, "echo 'I decided the script is perfect'").propose(context)


@pytest.mark.slow
def test_train_py_left_invalid_is_a_proposal_error_and_stays_as_left(tmp_path: Path, context: Context) -> None:
    with pytest.raises(ProposalError, match=r"left train\.py invalid"):
        agent(tmp_path, "echo 'def broken(:' >> train.py; echo 'added a function'").propose(context)
    assert (context.workspace / "train.py").read_text().endswith("def broken(:\n")


@pytest.mark.slow
def test_missing_description_falls_back_to_a_generic_one(tmp_path: Path, context: Context) -> None:
    proposal = agent(tmp_path, EDIT).propose(context)
    assert "no description" in proposal.description


@pytest.mark.skipif(with_hidden(pid_namespace(), []) == pid_namespace(), reason="no namespace here can hide a place")
@pytest.mark.slow  # over half a second: the fast subset stays under a minute
def test_an_agent_sees_no_ray_token_nor_rays_folder(tmp_path: Path, context: Context, monkeypatch) -> None:
    """BROKE, fixed: an agent read the token the loop joins a Ray cluster with (RAY_AUTH_TOKEN, the file
    RAY_AUTH_TOKEN_PATH names, ~/.ray/auth_token) and Ray's folder (the cluster's address, its nodes' sockets). Its
    shell shares this machine's network: with them it joined the cluster, whose tasks run as the user, outside its
    namespace, where the validation data can be read (loop/ray_cluster.py)."""
    home, temp, token_file = tmp_path / "home", tmp_path / "tmp", tmp_path / "cluster-token"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("token in the home")
    (temp / "ray").mkdir(parents=True)
    (temp / "ray" / "ray_current_cluster").write_text("10.0.0.1:6379")
    token_file.write_text("token in a file")
    for name, value in (("HOME", home), ("RAY_TMPDIR", temp), ("RAY_AUTH_TOKEN_PATH", token_file)):
        monkeypatch.setenv(name, str(value))
    monkeypatch.setenv("RAY_AUTH_TOKEN", "token in the environment")
    look = 'cat ~/.ray/auth_token "$RAY_AUTH_TOKEN_PATH" "$RAY_TMPDIR/ray/ray_current_cluster"'
    agent(tmp_path, f'({look}; echo "$RAY_AUTH_TOKEN") > seen 2>/dev/null || true\n{EDIT}').propose(context)
    assert (context.workspace / "seen").read_text().strip() == ""


def _with_marker(marker: str) -> list[int]:
    """Live processes (zombies aside) whose command line holds `marker`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes() and _alive(int(proc.name)):
                found.append(int(proc.name))
        except OSError:  # ended meanwhile
            continue
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` is a live process (a zombie counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def test_the_ledger_names_the_agents_program_not_its_command_line() -> None:
    agent = CommandAgent("OPENAI_API_KEY=sk-secret timeout 600 /usr/local/bin/aider --api-key sk-other --yes")
    assert agent.model == "aider"
    assert CommandAgent("cd x && ./run.sh").model == "shell command"


_NAMESPACE_READ_ONLY = pytest.mark.skipif(
    with_hidden(pid_namespace(), []) == pid_namespace(), reason="no namespace here can make a place read-only"
)


@pytest.mark.slow
@_NAMESPACE_READ_ONLY
def test_a_read_only_place_whose_path_holds_a_space_or_a_mount_is_read_only_and_the_agent_runs(
    tmp_path: Path, context: Context, monkeypatch
) -> None:
    """BROKE, fixed: the places made read-only were remounted by the paths `findmnt` printed, which escapes a space
    as \\x20: a venv or library folder whose path held one could not be made read-only, and every turn failed."""
    libs = tmp_path / "my libs"
    libs.mkdir()
    monkeypatch.setenv("LD_LIBRARY_PATH", str(libs))
    agent(tmp_path, f'(touch "{libs}/planted" 2> seen) || true\n{EDIT}').propose(context)
    assert "Read-only file system" in (context.workspace / "seen").read_text()
    assert not (libs / "planted").exists()


@pytest.mark.slow
@_NAMESPACE_READ_ONLY
def test_without_findmnt_a_read_only_place_is_still_read_only(tmp_path: Path, context: Context, monkeypatch) -> None:
    """BROKE, fixed: the read-only places were remounted one by one as `findmnt` listed them, and where it could not
    be run (a system with util-linux's unshare and mount but not its findmnt: Alpine packs it apart) it listed none:
    every place stayed writable, silently. The place itself is now remounted by its own path, and a findmnt that
    fails stops the agent."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        for program in Path(folder).glob("*") if os.path.isdir(folder) else ():
            if program.name != "findmnt" and not (bin_dir / program.name).exists():
                (bin_dir / program.name).symlink_to(program)
    libs = tmp_path / "libs"
    libs.mkdir()
    monkeypatch.setenv("LD_LIBRARY_PATH", str(libs))
    monkeypatch.setenv("PATH", str(bin_dir))
    try:
        agent(tmp_path, f'(touch "{libs}/planted" 2> seen) || true\n{EDIT}').propose(context)
    except ProposalError as err:
        assert "read-only" in str(err)
    assert not (libs / "planted").exists()


@pytest.mark.slow
@_NAMESPACE_READ_ONLY
def test_an_agent_cannot_plant_a_pth_file_in_the_users_site_that_does_not_exist_yet(
    tmp_path: Path, context: Context, monkeypatch
) -> None:
    """BROKE, fixed: outside a venv Python reads the user's site-packages (`pip install --user`) as it starts; where
    that folder did not exist it was neither shown to runs nor made read-only, only watched at the ends of a turn.
    An agent could make it with a .pth file, whose code runs in every Python started meanwhile (an evaluator of
    another worker, as the user, outside any namespace), and take it away before the turn ended. The folder is
    made, and made read-only, before the turn."""
    import site

    user_site = tmp_path / "home" / ".local" / "lib" / "python3" / "site-packages"
    monkeypatch.setattr(site, "ENABLE_USER_SITE", True)
    monkeypatch.setattr(site, "USER_SITE", str(user_site))
    plant = f'(mkdir -p "{user_site}" && echo "import os" > "{user_site}/planted.pth") 2> seen || true'
    agent(tmp_path, f"{plant}\n{EDIT}").propose(context)
    assert "Read-only file system" in (context.workspace / "seen").read_text()
    assert not (user_site / "planted.pth").exists()


@pytest.mark.slow
@_NAMESPACE_READ_ONLY
def test_a_link_on_the_path_you_named_the_workspace_by_in_a_read_only_place_is_pinned_and_the_agent_runs(
    tmp_path: Path, context: Context, monkeypatch
) -> None:
    """Each link on the path you named the workspace by is made a mount point in the agent's namespace (test_red_team_
    namespace.py: where the agent may write); in a place made read-only, whose mounts are remounted read-only by the
    paths findmnt lists, the link's is left as it is: `mount` followed it, and remounted its target read-only (the
    folder that holds the workspace, bound onto itself)."""
    libs = tmp_path / "my libs"
    libs.mkdir()
    (libs / "current").symlink_to(tmp_path)
    monkeypatch.setenv("LD_LIBRARY_PATH", str(libs))
    named = libs / "current" / "ws"
    turn = f'(ln -sfn /nowhere "{libs}/current" 2> seen) || true\ntouch "{tmp_path}/beside"\n{EDIT}'
    agent(tmp_path, turn).propose(dataclasses.replace(context, named=named))
    assert "Read-only file system" in (context.workspace / "seen").read_text()  # (else "Device or resource busy")
    assert (libs / "current").readlink() == tmp_path


def test_the_links_and_folders_on_the_path_you_named_the_workspace_by_are_found_as_the_kernel_follows_them(
    tmp_path: Path,
) -> None:
    """`on_the_way`: each link at its real path (in a link's target too, relative or absolute, after a `..`), and each
    folder the path passes, a real path (one renamed and replaced by a link would send a later `..` elsewhere)."""
    (tmp_path / "data" / "run5" / "ws").mkdir(parents=True)
    (tmp_path / "data" / "old").mkdir()
    (tmp_path / "data" / "current").symlink_to("run5")
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    named = tmp_path / "alias" / "old" / ".." / "current" / "ws"
    links, folders = namespace.on_the_way(named)
    real = tmp_path.resolve()
    assert links[-2:] == [real / "alias", real / "data" / "current"]
    assert folders[-4:] == [real / "data", real / "data" / "old", real / "data" / "run5", real / "data" / "run5" / "ws"]
    plain = real / "data" / "run5" / "ws"  # no link: each folder from / down
    assert namespace.on_the_way(plain) == ([], [*reversed(plain.parents), plain][1:])


@pytest.mark.parametrize(
    ("escaped", "path"),
    [
        (r"/home/me/my\x20runs", "/home/me/my runs"),
        (r"/mnt/a\x0ab", "/mnt/a\nb"),  # BROKE, fixed: a newline was dropped ("/mnt/ab" was remounted instead)
        (r"/mnt/ends\x0a", "/mnt/ends\n"),
        (r"/mnt/back\x5cx41", "/mnt/back\\x41"),  # a backslash decoded is not decoded again
        (r"/mnt/tab\x09", "/mnt/tab\t"),
        ("/plain", "/plain"),
    ],
)
def test_the_agents_namespace_decodes_the_mount_points_findmnt_escapes(escaped: str, path: str) -> None:
    """Each mount point under a read-only place is remounted read-only by the path findmnt prints, escaped."""
    decode = DECODE + 't=$(x "$1"; echo .); t=${t%.}; printf "%s" "$t"'
    assert subprocess.run(["/bin/sh", "-c", decode, "sh", escaped], capture_output=True).stdout == path.encode()
