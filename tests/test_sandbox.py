"""The confinement of train.py: each test runs a small Python snippet inside the sandbox and checks one promise.

These tests fail (never skip) when bubblewrap cannot confine here: CI installs it, and a silently skipped
sandbox test would hide that the untrusted run is not confined.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from autoresearch.evaluator import gpu_nodes, promises, sandbox
from autoresearch.evaluator.gpu_nodes import Nodes

SECRET = "VALIDATION-SHARD-SECRET-7f3a"


@pytest.fixture(autouse=True)
def _confinement_works() -> None:
    reason = sandbox.unavailable_reason()
    if reason is not None:
        pytest.fail(f"the sandbox does not work on this machine: {reason}")


@dataclass
class Layout:
    workspace: Path  # hidden: ledger, .git, results.tsv
    data: Path  # hidden: holds the validation shard
    workdir: Path  # the run's box, inside the hidden workspace
    cache: Path  # writable: a compile cache

    @property
    def shard(self) -> Path:
        return self.data / "val.bin"


@pytest.fixture
def layout() -> Iterator[Layout]:
    # Outside /tmp on purpose: the sandbox's private /tmp hides all of /tmp anyway, so under it the hidden-directory
    # tests would pass for the wrong reason.
    base = Path(tempfile.mkdtemp(prefix="autoresearch-sandbox-test-", dir="/var/tmp"))
    workspace, data = base / "workspace", base / "data"
    workdir = workspace / ".autoresearch" / "runs" / "7-0" / "box"
    workdir.mkdir(parents=True)
    data.mkdir()
    (data / "val.bin").write_text(SECRET)
    (workspace / "results.tsv").write_text("run\tval_bpb\n")
    (base / "cache").mkdir()
    yield Layout(workspace, data, workdir, base / "cache")
    shutil.rmtree(base)


@pytest.fixture
def shown_layout(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> Layout:
    """The layout with its folder on sys.path, so shown to the run (as a venv's folder in the home would be): what
    is hidden in it must be hidden by its own mount, not merely left out of the view."""
    monkeypatch.setattr(sys, "path", [*sys.path, str(layout.workspace.parent)])
    return layout


def confined(
    layout: Layout,
    code: str,
    *args: object,
    env: Mapping[str, str] | None = None,
    hidden: Sequence[Path] | None = None,
    readable: Sequence[Path] = (),
    **run_options: object,
) -> subprocess.CompletedProcess[str]:
    """Run `python -c code args...` confined the way a real run is."""
    argv = sandbox.command(
        [sys.executable, "-c", code, *map(str, args)],
        workdir=layout.workdir,
        writable=[layout.cache],
        readable=readable,
        hidden=[layout.workspace, layout.data] if hidden is None else hidden,
        env=os.environ if env is None else env,
    )
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **run_options)  # type: ignore[call-overload]


def test_a_hidden_directory_is_empty_and_its_files_cannot_be_read(shown_layout: Layout) -> None:
    layout = shown_layout
    code = (
        "import os, sys\n"
        "print(os.listdir(sys.argv[1]), os.listdir(sys.argv[2]))\n"
        "try:\n"
        "    print(open(sys.argv[3]).read())\n"
        "except OSError as error:\n"
        "    print(type(error).__name__)\n"
    )
    run = confined(layout, code, layout.data, layout.workspace, layout.shard)
    assert run.returncode == 0, run.stderr
    assert SECRET not in run.stdout
    assert run.stdout.split("\n")[:2] == ["[] ['.autoresearch']", "FileNotFoundError"]
    # The control: without hiding, the same snippet does read it, so the test above is not vacuous.
    assert SECRET in confined(layout, code, layout.data, layout.workspace, layout.shard, hidden=[]).stdout


def test_only_the_system_and_pythons_paths_are_shown_not_the_home_var_tmp_or_opt(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What an agent could leave there, trained off the budget, for train.py to load (red team, 2026-12-02): a file
    # in the home, in /var/tmp (the layout lies there), in a folder like /opt. Only what is on sys.path is shown.
    base = layout.workspace.parent
    home, opt, venv = base / "home", base / "opt", base / "home" / "venv" / "site-packages"
    venv.mkdir(parents=True)
    opt.mkdir()
    for folder in (home, opt, venv):
        (folder / "weights.bin").write_text(SECRET)
    monkeypatch.setattr(sys, "path", [*sys.path, str(venv)])
    code = (
        "import os, sys\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        print(open(path).read())\n"
        "    except OSError as error:\n"
        "        print(type(error).__name__)\n"
        "print(sorted(os.listdir('/')))\n"
    )
    run = confined(layout, code, home / "weights.bin", opt / "weights.bin", venv / "weights.bin",
                   env={**os.environ, "HOME": str(home)})  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[:3] == ["FileNotFoundError", "FileNotFoundError", SECRET]  # only the one on sys.path
    top = set(ast.literal_eval(lines[3]))
    assert not top & {"home", "opt", "srv", "mnt", "media", "run", "boot"}, top
    assert {"usr", "etc", "dev", "proc", "sys", "tmp", "var"} <= top  # (/var holds only the layout's path)


def test_the_interpreters_own_site_packages_off_sys_path_are_hidden(
    shown_layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A venv's base Python: its lib is shown (the standard library, libpython), its site-packages is not on the
    # run's sys.path and could hold what an agent left there.
    unused = shown_layout.workspace.parent / "lib" / "python3" / "site-packages"
    unused.mkdir(parents=True)
    (unused / "weights.bin").write_text(SECRET)
    monkeypatch.setattr(sandbox.shown_paths, "unused_site_packages", lambda: [unused])
    run = confined(shown_layout, "import os, sys; print(os.listdir(sys.argv[1]))", unused)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_a_python_path_reached_through_a_link_is_importable_at_its_linked_path(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = layout.workspace.parent / "real-venv"
    real.mkdir()
    (real / "linked_module.py").write_text("VALUE = 'imported through the link'\n")
    link = layout.workspace.parent / "venv-link"
    link.symlink_to(real)  # a venv that is a link to another, as sys.path names it
    monkeypatch.setattr(sys, "path", [*sys.path, str(link)])
    run = confined(
        layout, "import sys, linked_module; print(linked_module.VALUE)", env={**os.environ, "PYTHONPATH": str(link)}
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "imported through the link"


def test_writing_outside_workdir_writable_dirs_and_tmp_fails(layout: Layout) -> None:
    existing = [Path(sandbox.__file__), layout.workspace / "results.tsv"]
    new = [
        layout.data / "planted.bin",
        layout.workspace / "ledger.jsonl",
        Path("/etc/autoresearch-sandbox-test"),
        Path(sysconfig.get_paths()["purelib"], "autoresearch_sandbox_planted.py"),
    ]
    code = (
        "import os, sys\n"
        "for path, flags in zip(sys.argv[1::2], sys.argv[2::2]):\n"
        "    try:\n"
        "        os.close(os.open(path, os.O_WRONLY | int(flags)))\n"
        "        print('WROTE', path)\n"
        "    except OSError as error:\n"
        "        print('denied', error.strerror, path)\n"
    )
    # Existing files are opened for appending (nothing is written even if it succeeds), new ones created.
    targets = [(path, os.O_APPEND) for path in existing] + [(path, os.O_CREAT | os.O_EXCL) for path in new]
    try:
        run = confined(layout, code, *[item for target in targets for item in target])
    finally:
        for path in new:
            if path.exists() and path.parent != layout.data:
                path.unlink()
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == len(targets)
    assert all(line.startswith("denied") for line in lines), run.stdout


def test_workdir_writable_dirs_tmp_and_home_are_writable_and_workdir_writes_show_outside(layout: Layout) -> None:
    marker = f"autoresearch-sandbox-{uuid.uuid4().hex}"
    code = (
        "import os, sys\nfor path in sys.argv[1:]:\n    with open(path, 'w') as f:\n        f.write('written inside')\n"
    )
    env = {**os.environ, "HOME": "/root"}  # the caller's HOME is read-only inside: a writable one replaces it
    home = "os.path.expanduser('~/x')"
    run = confined(
        layout,
        code + f"open({home}, 'w').write('x')\n",
        "out.txt",
        layout.cache / "kernel.bin",
        f"/tmp/{marker}",
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert (layout.workdir / "out.txt").read_text() == "written inside"
    assert (layout.cache / "kernel.bin").read_text() == "written inside"
    assert not Path("/tmp", marker).exists()  # /tmp inside is private


def test_home_is_kept_when_the_caller_points_it_at_a_writable_directory(layout: Layout) -> None:
    env = {"PATH": os.defpath, "HOME": str(layout.cache)}
    run = confined(layout, "import os; print(os.environ['HOME'])", env=env)
    assert run.stdout.strip() == str(layout.cache)


def test_a_tcp_server_on_the_host_loopback_cannot_be_reached_from_inside(layout: Layout) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # reachable from outside
        code = (
            "import socket, sys\n"
            "try:\n"
            "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2)\n"
            "    print('CONNECTED')\n"
            "except OSError as error:\n"
            "    print(type(error).__name__)\n"
            "print(sorted(name for _, name in socket.if_nameindex()))\n"
        )
        run = confined(layout, code, port)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["ConnectionRefusedError", "['lo']"]


def test_processes_outside_are_invisible_and_cannot_be_signalled(layout: Layout) -> None:
    code = (
        "import os, sys\n"
        "print(len([name for name in os.listdir('/proc') if name.isdigit()]))\n"
        "for pid in map(int, sys.argv[1:]):\n"
        "    try:\n"
        "        os.kill(pid, 0)\n"
        "        print(pid, os.path.exists(f'/proc/{pid}'), 'SIGNALLED')\n"
        "    except ProcessLookupError:\n"
        "        print(pid, os.path.exists(f'/proc/{pid}'), 'no such process')\n"
    )
    # Pids 1 and 2 exist inside as well (bwrap's init, the snippet), so a container's low pids prove nothing.
    pids = [pid for pid in (os.getpid(), os.getppid()) if pid > 2]
    run = confined(layout, code, *pids)
    assert run.returncode == 0, run.stderr
    count, *lines = run.stdout.splitlines()
    assert count == "2"  # bwrap's init and the snippet: nothing else exists for it
    assert lines == [f"{pid} False no such process" for pid in pids]


def test_the_run_has_its_own_namespaces_no_capabilities_and_no_controlling_terminal(layout: Layout) -> None:
    kinds = ["pid", "net", "ipc", "uts", "mnt", "cgroup"]
    code = (
        "import json, os, sys\n"
        "status = dict(line.split(':\\t') for line in open('/proc/self/status').read().splitlines())\n"
        "print(json.dumps({\n"
        "    'ns': {kind: os.readlink(f'/proc/self/ns/{kind}') for kind in sys.argv[1:]},\n"
        "    'caps': status['CapEff'],\n"
        "    'session': os.getsid(0),\n"
        "    'sys_ro': bool(os.statvfs('/sys').f_flag & os.ST_RDONLY),\n"
        "    'sys': os.listdir('/sys') != [],\n"
        "}))\n"
    )
    run = confined(layout, code, *kinds)
    assert run.returncode == 0, run.stderr
    inside = json.loads(run.stdout)
    for kind in kinds:
        assert inside["ns"][kind] != os.readlink(f"/proc/self/ns/{kind}"), kind
    assert int(inside["caps"], 16) == 0
    # setsid() inside: the session leader is bwrap's init, not the caller's (which shows as 0), so no terminal to
    # push input into.
    assert inside["session"] == 1
    assert inside["sys_ro"] and inside["sys"]  # /sys readable for CUDA/NVML, not writable


def test_the_run_cannot_unmount_a_hidden_directory_or_remount_the_root_writable(shown_layout: Layout) -> None:
    layout = shown_layout
    code = (
        "import ctypes, os, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "MS_REMOUNT, MS_BIND = 32, 4096\n"
        "print(libc.umount2(sys.argv[1].encode(), 2), os.strerror(ctypes.get_errno()))\n"  # MNT_DETACH
        "print(libc.mount(None, b'/', None, MS_REMOUNT | MS_BIND, None), os.strerror(ctypes.get_errno()))\n"
        "print(os.listdir(sys.argv[1]))\n"
    )
    run = confined(layout, code, layout.data)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["-1 Operation not permitted", "-1 Operation not permitted", "[]"]


DAEMON = """
import os, signal, subprocess, sys, time
grow, marker, how = sys.argv[1:]
loop = f"import time\\nwhile True:\\n    open({grow!r}, 'a').write('x')\\n    time.sleep(0.01)  # {marker}"
if how == "double-fork":
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(sys.executable, [sys.executable, "-c", loop])
        os._exit(0)
    os.wait()
else:  # nohup-style: SIGHUP ignored (it survives exec), its own session, detached from our pipes
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    quiet = subprocess.DEVNULL
    subprocess.Popen([sys.executable, "-c", loop], start_new_session=True, stdin=quiet, stdout=quiet, stderr=quiet)
while not os.path.exists(grow) or os.path.getsize(grow) < 5:
    time.sleep(0.01)
if how == "sleep":
    time.sleep(60)
"""


def _running_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            pass  # it ended while we looked
    return pids


def _assert_leftovers_gone(grow: Path, marker: str) -> None:
    deadline = time.monotonic() + 1.0
    while _running_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _running_with(marker) == [], "a process started inside outlived the sandbox"
    size = grow.stat().st_size
    time.sleep(0.3)
    assert grow.stat().st_size == size, "something inside still appends to the file"


def test_a_double_forked_daemon_dies_when_the_confined_script_exits(layout: Layout) -> None:
    marker = f"leftover-{uuid.uuid4().hex}"
    run = confined(layout, DAEMON, "grow.txt", marker, "double-fork")
    assert run.returncode == 0, run.stderr
    _assert_leftovers_gone(layout.workdir / "grow.txt", marker)


def test_a_nohup_setsid_loop_dies_when_bwrap_is_killed_from_outside(layout: Layout) -> None:
    marker = f"leftover-{uuid.uuid4().hex}"
    grow = layout.workdir / "grow.txt"
    argv = sandbox.command(
        [sys.executable, "-c", DAEMON, str(grow), marker, "sleep"],
        workdir=layout.workdir,
        hidden=[layout.workspace],
        env=os.environ,
    )
    bwrap = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not (grow.exists() and grow.stat().st_size >= 5) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _running_with(marker), "the loop did not start"
        os.killpg(bwrap.pid, signal.SIGKILL)
        assert bwrap.wait(timeout=5) == -signal.SIGKILL
    finally:
        if bwrap.poll() is None:
            bwrap.kill()
    _assert_leftovers_gone(grow, marker)


def test_secrets_and_autoresearch_settings_are_removed_but_device_and_peak_flops_pass(layout: Layout) -> None:
    env = {
        "PATH": os.defpath,
        "LANG": "C.UTF-8",
        "OPENAI_API_KEY": "sk-leak-1",
        "anthropic_api_key": "sk-leak-2",
        "HF_TOKEN": "hf-leak-3",
        "AWS_SECRET_ACCESS_KEY": "leak-4",
        "PGPASSWORD": "leak-5",
        "GOOGLE_APPLICATION_CREDENTIALS": "/leak/6.json",
        "AUTORESEARCH_RESULT": "/leak/result.json",
        "AUTORESEARCH_CONFIG": "/leak/config.toml",
        "AUTORESEARCH_DEVICE": "cuda:1",
        "AUTORESEARCH_PEAK_FLOPS": "9.9e14",
        "MY_DB_URL": "postgres://user:leak-7@db/x",  # names that no deny-list would know: not passed either
        "GITHUB_PAT": "leak-8",
        "HTTPS_PROXY": "http://user:leak-9@proxy:3128",
        "PYTHONHASHSEED": "0",
    }
    argv = sandbox.command(["true"], workdir=layout.workdir, env=env)
    assert "leak" not in " ".join(argv)  # not even on bwrap's command line, which `ps` shows
    run = confined(layout, "import json, os; print(json.dumps(dict(os.environ)))", env=env)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {
        "PATH": os.defpath,
        "LANG": "C.UTF-8",
        "AUTORESEARCH_DEVICE": "cuda:1",
        "AUTORESEARCH_PEAK_FLOPS": "9.9e14",
        "PYTHONHASHSEED": "0",
        "HOME": "/tmp",
        "PWD": str(layout.workdir),  # bwrap's --chdir sets it
    }


def test_credentials_in_the_home_directory_and_system_password_files_cannot_be_read(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = layout.workspace.parent / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text(SECRET)
    (home / ".netrc").write_text(SECRET)
    (home / ".venv-like").mkdir()
    (home / ".venv-like" / "site.py").write_text("# a Python installation in the home stays readable\n")
    code = (
        "import sys, pathlib\n"
        "for p in sys.argv[1:]:\n"
        "    f = pathlib.Path(p)\n"
        "    print(p, f.read_text() if f.is_file() else 'absent')\n"
    )
    paths = [home / ".ssh" / "id_ed25519", home / ".netrc", home / ".venv-like" / "site.py", "/etc/shadow"]
    monkeypatch.setattr(sys, "path", [*sys.path, str(home / ".venv-like")])  # on sys.path: shown
    run = confined(layout, code, *paths, env={**os.environ, "HOME": str(home)})
    assert run.returncode == 0, run.stderr
    assert SECRET not in run.stdout
    lines = dict((line + " ").split(" ", 1) for line in run.stdout.splitlines())
    lines = {k: v.strip() for k, v in lines.items()}
    assert lines[str(home / ".ssh" / "id_ed25519")] == "absent" and lines[str(home / ".netrc")] in ("", "absent")
    assert "stays readable" in lines[str(home / ".venv-like" / "site.py")]
    assert lines["/etc/shadow"] in ("", "absent")


def test_python_packages_under_tmp_stay_importable_but_do_not_reveal_a_hidden_directory(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    packages = Path(tempfile.mkdtemp(prefix="autoresearch-sandbox-pkgs-", dir="/tmp"))  # like a checkout in /tmp
    try:
        (packages / "checked_out.py").write_text("VALUE = 'imported'\n")
        monkeypatch.setattr(sys, "path", [*sys.path, str(packages), str(layout.workspace.parent)])
        env = {**os.environ, "PYTHONPATH": str(packages)}
        code = "import checked_out, pathlib, sys; print(checked_out.VALUE, sorted(pathlib.Path(sys.argv[1]).iterdir()))"
        run = confined(layout, code, layout.workspace, env=env)
        assert run.returncode == 0, run.stderr
        assert run.stdout.split()[0] == "imported"
        assert SECRET not in run.stdout and "results.tsv" not in run.stdout  # its parent is on sys.path, yet hidden
    finally:
        shutil.rmtree(packages)


def test_an_inherited_pipe_reaches_the_confined_process(layout: Layout) -> None:
    read_end, write_end = os.pipe()
    try:
        env = {**os.environ, "AUTORESEARCH_CHANNEL": str(write_end)}
        code = "import os; os.write(int(os.environ['AUTORESEARCH_CHANNEL']), b'handed over')"
        run = confined(layout, code, env=env, pass_fds=(write_end,))
        os.close(write_end)
        assert run.returncode == 0, run.stderr
        with os.fdopen(read_end, "rb") as pipe:
            assert pipe.read() == b"handed over"
    finally:
        for fd in (read_end, write_end):
            with contextlib.suppress(OSError):  # already closed above
                os.close(fd)


def test_the_exit_code_of_the_confined_command_is_bwraps(layout: Layout) -> None:
    assert confined(layout, "raise SystemExit(37)").returncode == 37
    assert confined(layout, "pass").returncode == 0


@pytest.mark.slow
def test_torch_imports_inside_from_the_read_only_venv(layout: Layout) -> None:
    run = confined(layout, "import torch; print(torch.ones(3).sum().item())")
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "3.0"


def test_gpu_device_nodes_are_bound_over_the_fresh_dev_only_when_asked(
    layout: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes = Nodes(["/dev/nvidia0", "/dev/nvidia-caps", "/dev/nvidiactl"], None, False)
    monkeypatch.setattr(gpu_nodes, "own_nodes", lambda env: nodes)
    argv = sandbox.command(["true"], workdir=layout.workdir, env={})
    fresh_dev = argv.index("--dev")
    for node in ["/dev/nvidia0", "/dev/nvidia-caps", "/dev/nvidiactl", "/dev/dri"]:
        at = argv.index(node)
        assert argv[at - 1 : at + 2] == ["--dev-bind-try", node, node]
        assert at > fresh_dev  # bound after --dev /dev, else the fresh /dev would cover it
    assert "--dev-bind-try" not in sandbox.command(["true"], workdir=layout.workdir, env={}, gpu=False)


def test_a_hidden_file_is_masked_and_hiding_a_writable_directory_is_refused(shown_layout: Layout) -> None:
    layout = shown_layout
    code = "import sys\ntry:\n    print(repr(open(sys.argv[1]).read()))\nexcept OSError as exc:\n    print(exc.errno)"
    run = confined(layout, code, layout.shard, hidden=[layout.shard])  # a one-file corpus: masked by /dev/null
    assert run.returncode == 0 and run.stdout == "13\n", run.stdout + run.stderr  # (bound nodev: EACCES)
    with pytest.raises(ValueError, match="both hidden and writable"):
        sandbox.command(["true"], workdir=layout.workdir, hidden=[layout.workdir], env={})


def test_unavailable_reason_says_bwrap_is_missing_when_it_is_not_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bwrap
    sandbox.unavailable_reason.cache_clear()
    sandbox.bwrap.cache_clear()  # found once, as the loop finds it
    try:
        assert sandbox.unavailable_reason() == "bubblewrap (bwrap) is not installed or not on PATH"
        with pytest.raises(sandbox.SandboxUnavailable, match="bwrap") as raised:
            sandbox.ensure_available()
        assert "apt-get install bubblewrap" in str(raised.value)
    finally:
        monkeypatch.undo()
        sandbox.unavailable_reason.cache_clear()
    sandbox.bwrap.cache_clear()  # found once, as the loop finds it
    assert sandbox.unavailable_reason() is None


def test_the_bus_sockets_under_run_are_not_shown(layout: Layout) -> None:
    # Through the session or system bus a run could have work started outside its sandbox (and its clock).
    buses = [d for d in sandbox.SYSTEM_SOCKET_DIRS if Path(d).is_dir()]
    code = "import os, sys\nfor d in sys.argv[1:]:\n    print(d, len(os.listdir(d)) if os.path.isdir(d) else 0)\n"
    run = confined(layout, code, *buses)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [word for d in buses for word in (d, "0")]  # empty inside, whatever is there


def test_the_loops_word_that_runs_are_confined_is_taken_by_evaluators_alone_never_from_a_shell(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What every run is given (evaluator/promises.py) is said to evaluators by the loop that probed for it. Set in the
    shell a coding agent calls `try` from, it must not make that loop skip its own probe (its warning, the workers'
    refusal), nor reach its evaluators as it was set."""
    monkeypatch.setenv(promises.ENV, "sandbox,anchor,filter,pids,memory")
    monkeypatch.setattr(sandbox, "bwrap", lambda: None)
    sandbox.unavailable_reason.cache_clear()
    sandbox.anchors_reason.cache_clear()
    try:
        assert sandbox.unavailable_reason() == "bubblewrap (bwrap) is not installed or not on PATH"
        assert sandbox.evaluators_reason() is None  # an evaluator takes it: the loop that started it probed
        said = sandbox.evaluator_env({promises.ENV: "sandbox,anchor", "PATH": os.defpath})[promises.ENV]
        assert not {"sandbox", "anchor"} & set(said.split(","))
        monkeypatch.setenv(sandbox.SWITCH_ENV, "off")
        sandbox.unavailable_reason.cache_clear()
        assert sandbox.evaluators_reason() == f"confinement is switched off (${sandbox.SWITCH_ENV}=off)"
    finally:  # and what the probes found meanwhile, without bubblewrap: not for the tests after this one
        for probe in (sandbox.unavailable_reason, sandbox.anchors_reason, sandbox.users_reason):
            probe.cache_clear()


def test_a_probe_that_fails_for_a_moment_is_asked_again_before_the_runs_go_without_what_it_stands_for(monkeypatch):
    """Cached for the loop's life: a probe for a run's own user that timed out once on a loaded machine had every run
    of the loop (and of a test worker) be root (CI)."""
    said = iter(["a run could not be made a user of its own: timed out", None, "no", "still no"])
    monkeypatch.setattr(sandbox, "_users_probe", lambda: next(said))
    sandbox.users_reason.cache_clear()
    try:
        assert sandbox.users_reason() is None and sandbox.users_reason() is None  # asked twice, then kept
        sandbox.users_reason.cache_clear()
        assert sandbox.users_reason() == "still no"  # twice no: no
    finally:
        sandbox.users_reason.cache_clear()
