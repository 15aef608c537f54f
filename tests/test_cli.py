"""The `autoresearch` command line: exit codes, messages that name the way out, nothing overwritten."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from autoresearch.cli import main
from autoresearch.config.apparatus import CONFIG_NAME
from autoresearch.config.presets import get_preset
from autoresearch.evaluator import sandbox, tasks
from autoresearch.loop.experiment import Experiment
from autoresearch.loop.ledger import Ledger
from autoresearch.vocabulary import Kind, Status
from autoresearch.workspace.init import train_py_for
from autoresearch.workspace.workspace import Workspace


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "autoresearch", *args], capture_output=True, text=True, env=env, timeout=120
    )


def words(text: str) -> str:
    return " ".join(text.split())


def test_an_unknown_preset_exits_2_naming_the_presets(subprocess_env: dict[str, str]) -> None:
    proc = cli("prepare", "--preset", "h200", "--dataset", "python-source", env=subprocess_env)
    assert proc.returncode == 2
    err = words(proc.stderr)
    assert "unknown preset 'h200'" in err and "h100, tiny" in err
    assert "Traceback" not in proc.stderr


def test_an_unknown_dataset_exits_2_naming_the_datasets(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    proc = cli("init", str(tmp_path / "ws"), "--preset", "tiny", "--dataset", "wikipedia", env=subprocess_env)
    assert proc.returncode == 2
    err = words(proc.stderr)
    assert "unknown dataset 'wikipedia'" in err
    assert all(name in err for name in ("python-source", "local:PATH", "climbmix", "fineweb-edu"))
    assert not (tmp_path / "ws").exists()


def test_root_with_another_dataset_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "--preset", "tiny", "--dataset", f"local:{tmp_path}", "--root", str(tmp_path)]) == 2
    assert "--root applies to --dataset python-source only" in words(capsys.readouterr().err)


@pytest.mark.parametrize("dataset", ["python-source", "local:{tmp}"])
def test_shards_with_a_dataset_prepared_whole_exits_2(
    dataset: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (red team): `prepare --shards 5` with python-source was ignored without a word."""
    named = dataset.format(tmp=tmp_path)
    args = ["prepare", "--preset", "tiny", "--dataset", named, "--shards", "5", "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 2
    assert "--shards applies to the downloaded datasets only" in words(capsys.readouterr().err)
    assert not (tmp_path / "c").exists()


def test_a_missing_or_unknown_subcommand_is_a_usage_error(subprocess_env: dict[str, str]) -> None:
    assert cli(env=subprocess_env).returncode == 2
    assert cli("frobnicate", env=subprocess_env).returncode == 2


def test_prepare_twice_says_already_prepared_the_second_time(
    corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["prepare", "--preset", "tiny", "--dataset", "python-source", "--root", str(corpus_dir)]
    args += ["--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    first = words(capsys.readouterr().err)
    assert "prepared in" in first and "already prepared" not in first
    assert main(args) == 0
    assert "already prepared" in words(capsys.readouterr().err)


def test_init_makes_a_workspace_with_the_presets_train_py_and_the_locked_config(
    corpus_dir: Path, tiny_prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws"
    args = ["init", str(ws), "--preset", "tiny", "--dataset", "python-source", "--root", str(corpus_dir)]
    assert main([*args, "--budget", "7.5"]) == 0
    assert "workspace ready" in words(capsys.readouterr().err)
    assert (ws / "train.py").read_text() == train_py_for(get_preset("tiny"))
    config = json.loads((ws / CONFIG_NAME).read_text())
    assert Path(config.pop("data_dir")) == tiny_prepared.resolve()
    assert config == {"preset": "tiny", "dataset": "python-source", "budget_seconds": 7.5}


@pytest.mark.slow  # over half a second
def test_paths_with_square_brackets_are_printed_as_they_are(
    corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed: the messages that name a path read it as rich markup. A cache under `runs[/]` ended `prepare`
    with a traceback (MarkupError), and `[bold]` in a workspace's name vanished from "workspace ready in ..."."""
    cache, ws = tmp_path / "runs[/]" / "cache", tmp_path / "runs[/]" / "[bold]ws"
    prepare = ["prepare", "--preset", "tiny", "--dataset", "python-source", "--root", str(corpus_dir)]
    init = ["init", str(ws), "--preset", "tiny", "--dataset", "python-source", "--root", str(corpus_dir)]
    for args in (prepare, prepare, init, ["report", "--workspace", str(ws)]):
        if args[0] == "report":  # of a night with a baseline
            ledger = Ledger(ws)
            ledger.verify()
            ledger.insert(Experiment(1, Kind.BASELINE, Status.KEEP, "baseline", "abc", commit="abc", val_bpb=3.34))
            ledger.close()
        assert main([*args, "--cache-dir", str(cache)] if args[0] != "report" else args) == 0, args
        out, err = capsys.readouterr()
        said = "".join((out + err).split())  # as the path reads, wherever the console folded it
        assert str(cache if args[0] == "prepare" else ws) in said and "Traceback" not in err, args
    assert (ws / "report.md").is_file()


def test_init_without_budget_takes_the_presets(corpus_dir: Path, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert main(["init", str(ws), "--preset", "tiny", "--dataset", "python-source", "--root", str(corpus_dir)]) == 0
    assert json.loads((ws / CONFIG_NAME).read_text())["budget_seconds"] == get_preset("tiny").budget_seconds


@pytest.mark.parametrize("existing", ["train.py", CONFIG_NAME])
def test_init_refuses_a_directory_that_already_has_a_workspace_file(
    existing: str, corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / existing).write_text("# my own work\n")
    args = ["init", str(ws), "--preset", "tiny", "--dataset", "python-source", "--root", str(corpus_dir)]
    assert main(args) == 2
    assert "already exists" in words(capsys.readouterr().err)
    assert (ws / existing).read_text() == "# my own work\n"
    assert [p.name for p in ws.iterdir()] == [existing]


def test_a_data_error_exits_2_with_its_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "a.txt").write_text("hello world\n" * 10)
    assert main(["prepare", "--preset", "tiny", "--dataset", f"local:{tmp_path / 'small'}"]) == 2
    err = words(capsys.readouterr().err)
    assert "corpus too small" in err and "hint:" in err


def test_a_read_only_workspace_is_a_clear_error_not_a_traceback(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(workspace.state)  # as `init` leaves it, on a read-only mount (also for root, who may write anything)
    made = Path.mkdir

    def read_only(path: Path, *args, **kwargs) -> None:
        if path.is_relative_to(workspace.root):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        made(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["status", "--workspace", str(workspace.root)]) == 2
    err = words(capsys.readouterr().err)
    assert f"error: Read-only file system: {workspace.state}" in err
    assert "hint: autoresearch writes its state" in err


@pytest.mark.parametrize(
    "edit",
    [
        lambda config: "{",
        lambda config: json.dumps({**config, "budget_seconds": "60"}),
        lambda config: json.dumps({**config, "budget_seconds": float("inf")}),
        lambda config: json.dumps({**config, "data_dir": None}),
        lambda config: b"\xff\xfe{}",
    ],
    ids=["not-json", "budget-a-string", "budget-infinite", "data-dir-null", "not-utf8"],
)
def test_an_apparatus_config_edited_by_hand_is_a_clear_error_naming_how_to_restore_it(
    edit, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    path = workspace.root / CONFIG_NAME
    text = edit(json.loads(path.read_text()))
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    assert main(["status", "--workspace", str(workspace.root)]) == 2
    err = words(capsys.readouterr().err)
    assert str(path) in err and f"`git checkout {CONFIG_NAME}` puts it back" in err


def test_a_library_warning_reads_as_the_clis_own_without_the_modules_name() -> None:
    """The tiny-corpus warning printed `WARNING autoresearch.data.sources.local: ...`."""
    code = (
        "import logging; from autoresearch.cli import configure_logging; configure_logging(); "
        "logging.getLogger('autoresearch.data.sources.local').warning('the corpus under x is tiny')"
    )
    err = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    assert err == "warning: the corpus under x is tiny\n"


@pytest.mark.parametrize("module", ["autoresearch", "autoresearch.cli"])
def test_python_m_runs_the_command_line(module: str, subprocess_env: dict[str, str]) -> None:
    """`python -m autoresearch.cli` ran it while the command line was a module; it stays so as a package."""
    proc = subprocess.run(
        [sys.executable, "-m", module, "--version"], capture_output=True, text=True, env=subprocess_env, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.startswith("autoresearch "), proc.stderr


def test_the_command_line_starts_in_a_working_directory_that_was_removed(tmp_path):
    """`autoresearch --help` in a folder removed meanwhile: there is no working directory to take off sys.path
    (`drop_working_directory`), which is no reason for a traceback."""
    gone = tmp_path / "gone"
    gone.mkdir()
    code = "import os, sys; os.rmdir(os.getcwd()); sys.argv = ['autoresearch', '--help']; import autoresearch.__main__"
    done = subprocess.run([sys.executable, "-c", code], cwd=gone, capture_output=True, text=True)
    assert done.returncode == 0 and "usage" in done.stdout, done.stderr


@pytest.mark.parametrize("damage", ["missing", "folder", "fifo", "not-utf8"])
@pytest.mark.parametrize("command", ["try", "submit"])
@pytest.mark.slow  # over half a second: the fast subset stays under a minute
def test_try_and_submit_over_a_train_py_that_is_no_text_say_how_to_put_it_back(
    command: str, damage: str, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed: they read train.py as it came: missing it was a FileNotFoundError traceback, a folder an
    IsADirectoryError one, bytes that are no UTF-8 a UnicodeDecodeError one, and a FIFO a wait for ever (so was
    the driver's read of it after a keep, where an agent at work had left one)."""
    import os
    import threading

    workspace.train_py.unlink()
    if damage == "folder":
        workspace.train_py.mkdir()
    elif damage == "fifo":
        os.mkfifo(workspace.train_py)
    elif damage == "not-utf8":
        workspace.train_py.write_bytes(b"\xff\xfe LR = 0.1\n")
    codes: list[int] = []
    running = threading.Thread(
        target=lambda: codes.append(main([command, "-m", "x", "--workspace", str(workspace.root)])), daemon=True
    )
    running.start()
    running.join(60)
    assert not running.is_alive(), "it waits on the FIFO"
    err = words(capsys.readouterr().err)
    assert codes == [2] and "train.py" in err and "`git checkout train.py` puts back" in err, err
    assert "Traceback" not in err


def test_a_file_in_place_of_the_state_folder_is_an_error_saying_to_move_it(
    workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed: every command was a FileExistsError traceback where .autoresearch was a file."""
    shutil.rmtree(workspace.state)
    workspace.state.write_text("x")
    assert main(["status", "--workspace", str(workspace.root)]) == 2
    err = words(capsys.readouterr().err)
    assert ".autoresearch is not a folder" in err and "mv .autoresearch" in err
    assert workspace.state.read_text() == "x"


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing", "folder"])
def test_run_over_a_train_py_that_is_missing_or_a_folder_says_so(
    damage: str, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed: `run` said "train.py has uncommitted changes" and to revert them, for a train.py deleted or made a
    folder."""
    workspace.train_py.unlink()
    if damage == "folder":
        workspace.train_py.mkdir()
    args = ["run", "--agent", "tune", "--max-experiments", "1", "--plain", "--workspace", str(workspace.root)]
    assert main(args) == 2
    err = words(capsys.readouterr().err)
    said = "train.py is missing" if damage == "missing" else "train.py is not a regular file (a folder"
    assert said in err and "`git checkout train.py` puts back" in err and "uncommitted" not in err, err
    assert "Traceback" not in err and not (workspace.state / "runs").exists()


@pytest.mark.parametrize("damage", ["folder", "fifo", "broken link"])
def test_a_settings_file_that_is_no_file_is_an_error_saying_to_move_it(
    damage: str, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed: a folder in place of autoresearch.json read as "not a research workspace (no autoresearch.json)",
    and its hint was to make one with `autoresearch init`."""
    import os

    config = workspace.config_path
    config.unlink()
    if damage == "folder":
        config.mkdir()
    elif damage == "fifo":
        os.mkfifo(config)
    else:
        config.symlink_to("gone.json")
    for command in ("status", "run"):
        assert main([command, "--workspace", str(workspace.root)]) == 2
        err = words(capsys.readouterr().err)
        assert "autoresearch.json is not a file" in err and "git checkout autoresearch.json" in err, err
        assert "not a research workspace" not in err and "Traceback" not in err


def test_status_report_and_show_refuse_a_ledger_another_hand_wrote_and_rebuild_ledger_takes_it(
    workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (red team): only `run` checked the ledger's seals. `status`, `report` and `show` showed a row set to
    `keep` at 1.0 by hand (sqlite3: a coding agent driving `try` from your shell can) as the night's best, and `report`
    wrote it into report.md. And the loop's refusal said to run `rebuild-ledger`, which said the ledger read fine."""
    import sqlite3

    from autoresearch.loop.experiment import Experiment
    from autoresearch.loop.ledger import Ledger
    from autoresearch.vocabulary import Kind, Status

    ledger = Ledger(workspace.root)
    ledger.verify()
    ledger.insert(Experiment(1, Kind.BASELINE, Status.KEEP, "baseline", "abc", commit="abc", val_bpb=3.34))
    ledger.insert(Experiment(2, Kind.EXPERIMENT, Status.DISCARD, "wider", "abc", commit="def", val_bpb=3.36))
    ledger.close()
    at = ["--workspace", str(workspace.root)]
    assert main(["status", *at]) == 0 and "best: exp 1 val_bpb 3.340000" in capsys.readouterr().out
    with sqlite3.connect(workspace.state / "ledger.sqlite") as db:
        db.execute("UPDATE experiments SET val_bpb = 1.0, status = 'keep' WHERE id = 2")
    for command in (["status"], ["report"], ["show", "2"]):
        assert main([*command, *at]) == 2, command
        out, err = capsys.readouterr()
        assert "written by another hand" in words(err) and "rebuild-ledger" in err and "1.0" not in out, command
        assert "Traceback" not in err
    assert not (workspace.root / "report.md").exists()
    assert main(["rebuild-ledger", *at]) == 0
    assert "rebuilt the ledger" in words(capsys.readouterr().err)
    assert main(["status", *at]) == 0


def test_status_beside_a_loop_that_writes_never_mistakes_its_rows_for_another_hands(workspace: Workspace) -> None:
    """`status` checks the seals while the loop writes rows and their seals: read in two statements, a commit of the
    loop's between them read as a row another hand changed."""
    import threading
    import time

    from autoresearch.loop.experiment import Experiment
    from autoresearch.loop.ledger import Ledger, verified_rows
    from autoresearch.vocabulary import Kind, Status

    started, done, failed = threading.Event(), threading.Event(), []

    def loop() -> None:
        try:
            ledger = Ledger(workspace.root)  # a connection of its own, as the loop's process has
            ledger.verify()
            ledger.insert(Experiment(1, Kind.EXPERIMENT, Status.RUNNING, "x", "abc"))
            started.set()
            for n in range(300):
                ledger.update(1, reason=f"step {n}")
            ledger.close()
        except BaseException as error:
            failed.append(error)
        finally:
            started.set()
            done.set()

    writer = threading.Thread(target=loop)
    writer.start()
    started.wait(30)
    deadline = time.monotonic() + 60
    try:
        while not done.is_set() and time.monotonic() < deadline:
            assert [e.id for e in verified_rows(workspace.root)] == [1]
    finally:
        writer.join()
    assert done.is_set() and not failed


@pytest.mark.parametrize(
    ("name", "value"),
    [("AUTORESEARCH_DEVICE", "banana"), ("AUTORESEARCH_DEVICE", "cuda:x"), ("AUTORESEARCH_PEAK_FLOPS", "abc"),
     ("AUTORESEARCH_PEAK_FLOPS", "-1"), ("AUTORESEARCH_PEAK_FLOPS", "nan")],
)  # fmt: skip
def test_a_device_setting_that_names_nothing_is_refused_before_anything_trains(
    name: str, value: str, workspace: Workspace, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (red team): each run read them and crashed once it started (`the evaluator could not run:
    RuntimeError: Expected one of cpu, cuda, ... device type at start of device string: banana`), with the hint for
    a changed apparatus, to make a new workspace."""
    monkeypatch.setenv(name, value)
    args = ["run", "--agent", "tune", "--max-experiments", "1", "--plain", "--workspace", str(workspace.root)]
    assert main(args) == 2
    err = words(capsys.readouterr().err)
    assert f"${name} is {value!r}" in err and "unset it" in err and "new workspace" not in err, err
    assert "Traceback" not in err and not (workspace.state / "runs").exists()


@pytest.mark.parametrize(
    ("value", "gpus", "said"),
    [("cuda", 0, "this torch sees no CUDA GPU"), ("cuda:2", 2, "this torch sees 2 CUDA GPUs (cuda:0 to cuda:1)"),
     ("mps", 0, "Apple MPS is not available here"), ("cuda:1", 2, None), ("cpu", 0, None)],
)  # fmt: skip
def test_a_device_setting_this_machine_cannot_give_is_refused_with_what_to_do(
    value: str, gpus: int, said: str | None, monkeypatch
) -> None:
    """BROKE, fixed: AUTORESEARCH_DEVICE=cuda on a machine without CUDA crashed every run in torch (`AssertionError:
    Torch not compiled with CUDA enabled`, a traceback by hand), and the loop said to make a new workspace."""
    from autoresearch import device as devices
    from autoresearch.errors import ConfigError

    monkeypatch.setenv("AUTORESEARCH_DEVICE", value)
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(devices.torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(devices.torch.backends.mps, "is_available", lambda: False)
    if said is None:
        devices.check_available()
        return
    with pytest.raises(ConfigError, match=f"AUTORESEARCH_DEVICE is '{value}', but {re.escape(said)}") as refused:
        devices.check_available()
    assert "unset AUTORESEARCH_DEVICE" in (refused.value.hint or "")


def test_a_command_run_in_a_folder_of_a_workspace_names_the_workspace(
    workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (red team): in a subfolder it said only "not a research workspace", and to make one with init."""
    (sub := workspace.root / "notes" / "day1").mkdir(parents=True)
    assert main(["status", "--workspace", str(sub)]) == 2
    err = words(capsys.readouterr().err)
    assert "is not a research workspace" in err and f"--workspace {workspace.root}" in err and "init" not in err


@pytest.mark.parametrize(
    "args",
    [["init", "ws", "--tag", ""], ["init", "ws", "--preset", " "], ["submit", "-m", ""], ["try", "-m", "  "],
     ["run", "--model", ""]],
)  # fmt: skip
def test_an_option_given_empty_is_a_usage_error_not_its_default(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (red team): `init --tag ''` made the branch of today's date, `submit -m ''` queued an experiment
    judged as "(no description)"."""
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--workspace", str(tmp_path)] if args[0] != "init" else [args[0], str(tmp_path / "ws"), *args[2:]])
    assert stopped.value.code == 2 and "may not be empty" in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("args", [["run", "--agnet", "tune"], ["status", "extra"], ["--plain", "report"]])
def test_an_option_the_command_does_not_take_is_refused_with_that_commands_usage(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user's walk through the README: `run --agnet tune` printed the usage of `autoresearch` as a whole, which
    names no option of `run`'s."""
    with pytest.raises(SystemExit) as stopped:
        main(args)
    err = capsys.readouterr().err
    command = next(a for a in args if not a.startswith("-"))
    assert stopped.value.code == 2 and f"usage: autoresearch {command} [-h]" in err
    assert f"autoresearch {command}: error: unrecognized arguments: {args[1] if args[0] == command else args[0]}" in err


@pytest.mark.parametrize(
    "args", [["run", "--agent", "tune", "--plain", "--max-experiments", "0"], ["submit", "-m", "LR up"]]
)  # `try` makes its loop as `run` does (commands.make_loop)
@pytest.mark.parametrize("runs", ["9", "100000"])
def test_more_baseline_runs_than_were_ever_measured_to_help_are_refused_before_anything_trains(
    args: list[str], runs: str, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed: `--baseline-runs` had no upper bound: `run --baseline-runs 100000` trained the baseline all night
    before judging a change (and `submit` started a loop in the background to do so)."""
    assert main([*args, "--baseline-runs", runs, "--workspace", str(workspace.root)]) == 2
    err = words(capsys.readouterr().err)
    assert f"--baseline-runs is at most 8 (got {runs})" in err and "hint: give 2 to 8" in err, err
    assert "Traceback" not in err and not (workspace.state / "runs").exists()
    assert not (workspace.state / "driver.log").exists()  # no loop started in the background


# -- a full disk ------------------------------------------------------------------------------------


@pytest.fixture
def judged(workspace: Workspace) -> Workspace:
    """The workspace with its baseline judged (fake runs): a ledger to report on."""
    from loop_support import FakeExecutor, make_loop

    loop = make_loop(workspace, FakeExecutor(lambda source: 1.0))
    loop.baseline()
    loop.ledger.close()
    return workspace


def chart_on_a_full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """progress.png's writing finds the disk full after a few bytes (as `fig.savefig` does)."""
    from autoresearch.report import plot

    class FillsUp:
        def savefig(self, path, **kwargs) -> None:
            Path(path).write_bytes(b"\x89PNG")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(plot, "progress_figure", lambda experiments: FillsUp())


def test_report_on_a_full_disk_says_the_disk_is_full_and_leaves_no_half_written_chart(
    judged: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (red team): `autoresearch report` on a full disk ended in a traceback from progress.png's
    `fig.savefig` (OSError: [Errno 28]), exit 1."""
    chart_on_a_full_disk(monkeypatch)
    assert main(["report", "--workspace", str(judged.root)]) == 2
    err = words(capsys.readouterr().err)
    assert "error: the disk is full" in err and "Traceback" not in err
    assert "`autoresearch report` writes the report again" in err and "experiment in flight" not in err
    assert not {"progress.png", "progress.png.tmp", "report.md"} & {p.name for p in judged.root.iterdir()}


@pytest.mark.slow  # a loop to a full disk: seconds
def test_a_run_stopped_by_a_full_disk_ends_with_its_own_error_when_the_report_cannot_be_written_either(
    judged: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (red team): at the end of `run` the report's own disk-full traceback (from `fig.savefig`) was
    chained after the loop's DiskFullError, exit 1, and driver.log had no `error:` line: `wait` could only say that
    an experiment was in flight but no loop ran."""
    from autoresearch.cli import commands
    from autoresearch.workspace.disk import DiskFullError

    def fills_up(*args, **kwargs) -> None:
        raise DiskFullError("writing the ledger")

    monkeypatch.setattr(commands, "drive", fills_up)
    chart_on_a_full_disk(monkeypatch)
    assert main(["run", "--plain", "--agent", "tune", "--workspace", str(judged.root)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert not any("Traceback" in line for line in lines)
    assert lines[-2:] == [
        "error: the disk is full: free space, then run again; nothing was lost",
        "  hint: writing the ledger failed for lack of space; the experiment in flight is trained again on the next "
        "start",
    ]
    assert sum(line.startswith("warning: the report was not written: the disk is full") for line in lines) == 1


@pytest.mark.parametrize("at", ["program.md", "git"])
def test_init_on_a_full_disk_says_so_removes_what_it_wrote_and_speaks_of_no_experiment(
    at: str,
    corpus_dir: Path,
    tiny_prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """BROKE, fixed (red team): `init` on a full disk ended in a traceback from `write_workspace_files`, and where
    git init was what failed, the hint said "the experiment in flight is trained again on the next start"."""
    from autoresearch.workspace import git

    written = Path.write_text

    def fills_up(path: Path, text: str, *args, **kwargs):
        if path.name == at:
            raise OSError(errno.ENOSPC, "No space left on device")
        return written(path, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", fills_up)
    if at == "git":  # git fails without saying why; the file system tells (`nearly_full`)
        monkeypatch.setattr(git.Git, "init", lambda self, branch: self("init", "--no-such-option"))
        monkeypatch.setattr(git, "nearly_full", lambda path: True)
    ws = tmp_path / "ws"
    assert main(["init", str(ws), "--preset", "tiny", "--dataset", "python-source", "--root", str(corpus_dir)]) == 2
    err = words(capsys.readouterr().err)
    assert "error: the disk is full" in err and "Traceback" not in err and "experiment in flight" not in err
    assert "run the same `autoresearch init` again" in err and not ws.exists()


def test_rebuild_ledger_on_a_full_disk_says_to_run_it_again_not_that_an_experiment_is_in_flight(
    judged: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (red team): the hint of `rebuild-ledger` (and of `init`, `prepare`) on a full disk said "the
    experiment in flight is trained again on the next start", where none was."""
    from autoresearch.loop import rebuild
    from autoresearch.workspace.disk import DiskFullError

    def fills_up(*args, **kwargs):
        raise DiskFullError("writing the ledger")  # as the ledger's writes say it

    monkeypatch.setattr(rebuild, "rebuild", fills_up)
    assert main(["rebuild-ledger", "--force", "--workspace", str(judged.root)]) == 2
    err = words(capsys.readouterr().err)
    assert "error: the disk is full" in err and "experiment in flight" not in err
    assert "writing the ledger failed for lack of space; run `autoresearch rebuild-ledger` again" in err


@pytest.mark.slow  # a second or two each
@pytest.mark.parametrize("data_dir", ["/nonexistent", "data"])
def test_a_data_dir_edited_to_a_short_path_says_there_is_no_data_there_and_to_put_the_file_back(
    data_dir: str, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (red team): `data_dir` set to "/nonexistent" in autoresearch.json, `run` ended in a traceback:
    FileNotFoundError, then IndexError from the hint's `Path(data_dir).parents[2]`."""
    config = workspace.root / CONFIG_NAME
    config.write_text(json.dumps({**json.loads(config.read_text()), "data_dir": data_dir}))
    assert main(["run", "--plain", "--agent", "tune", "--workspace", str(workspace.root)]) == 2
    err = words(capsys.readouterr().err)
    assert f"error: no prepared data in {data_dir}" in err and "Traceback" not in err
    assert "autoresearch.json differs from its commit" in err and "`git checkout autoresearch.json` to go on" in err


def test_python_train_py_without_its_data_names_the_cache_to_prepare_it_in_as_run_does(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (a user's walk through the README): with the workspace's cache gone, `run` said to prepare into
    it (`--cache-dir`), but `python train.py` only "run `autoresearch prepare --dataset python-source --preset tiny`",
    which prepares into $AUTORESEARCH_CACHE or the default cache, where the workspace does not read."""
    from autoresearch.errors import DataError
    from autoresearch.evaluator.referee import Referee

    gone = tmp_path / "elsewhere" / "data" / "python-source" / "tiny"  # as `prepare` lays out a cache
    config = workspace.root / CONFIG_NAME
    config.write_text(json.dumps({**json.loads(config.read_text()), "data_dir": str(gone)}))
    workspace.git.commit("the cache it was prepared in", CONFIG_NAME)  # as from init there: not an edit to put back
    with pytest.raises(DataError, match="no prepared data") as err:
        Referee(workspace.root / "train.py", dict(os.environ))
    assert f"--preset tiny --cache-dir {tmp_path / 'elsewhere'}` with the Python the workspace" in err.value.hint
    assert main(["run", "--plain", "--agent", "tune", "--workspace", str(workspace.root)]) == 2
    assert err.value.hint in words(capsys.readouterr().err)


@pytest.mark.slow  # over half a second: the fast subset stays under a minute
def test_a_full_disk_that_the_quarantine_holds_a_sizeable_share_of_names_it_and_says_it_can_go(
    judged: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (red team): an agent's litter, set aside in .autoresearch/quarantine/, filled the disk, and the
    loop stopped with "saving the workspace's state before the agent's turn failed for lack of space", with no word
    of where the space had gone."""
    from autoresearch.cli import commands
    from autoresearch.workspace import quarantine
    from autoresearch.workspace.disk import DiskFullError

    def fills_up(*args, **kwargs) -> None:
        raise DiskFullError("saving the workspace's state before the agent's turn")

    monkeypatch.setattr(commands, "drive", fills_up)
    monkeypatch.setattr(quarantine, "SIZEABLE_BYTES", 1_000_000, raising=False)  # 100 MB in the real world
    monkeypatch.setattr(quarantine, "SIZEABLE_SHARE", 1.0, raising=False)
    folder = judged.state / quarantine.FOLDER / "20261205-120000-exp7"
    folder.mkdir(parents=True)
    (folder / "litter.bin").write_bytes(b"x" * 1_500_000)
    assert main(["run", "--plain", "--agent", "tune", "--workspace", str(judged.root)]) == 2
    err = words(capsys.readouterr().err)
    assert "error: the disk is full" in err and "before the agent's turn failed for lack of space" in err
    assert f"{judged.state / quarantine.FOLDER} holds 2 MB of what steps set aside" in err and "then delete it" in err


def test_a_switch_set_to_a_value_it_does_not_know_is_warned_of(
    workspace: Workspace, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (red team): `AUTORESEARCH_COMPILE_CACHE=off`, meant as `run` (no shared compile cache, a channel
    between runs closed), was taken as unset without a word; so were `AUTORESEARCH_SANDBOX=maybe` and the others."""
    monkeypatch.setenv("AUTORESEARCH_COMPILE_CACHE", "off")
    monkeypatch.setenv("AUTORESEARCH_PREWARM", "0")  # known: no warning
    monkeypatch.setenv("AUTORESEARCH_SANDBOX", "On")  # known, whatever its case
    args = ["run", "--agent", "tune", "--max-experiments", "0", "--plain", "--workspace", str(workspace.root)]
    assert main(args) == 0
    captured = capsys.readouterr()
    said = words(captured.out + captured.err)
    assert "warning: $AUTORESEARCH_COMPILE_CACHE is 'off', which it does not know: taken as unset ('run'" in said
    assert "AUTORESEARCH_PREWARM" not in said and "AUTORESEARCH_SANDBOX" not in said


def test_a_loop_whose_runs_get_no_init_of_ours_or_no_user_of_their_own_says_so(
    workspace: Workspace, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where the probe for either failed at the loop's start (once a test worker's, on a loaded machine), the runs
    went on without it, root, or under bubblewrap's own init, and nothing said so."""
    if os.getuid() != 0 or sandbox.unavailable_reason() is not None:
        pytest.skip("a loop run as root whose runs are confined")
    args = ["run", "--agent", "tune", "--max-experiments", "0", "--plain", "--workspace", str(workspace.root)]
    assert main(args) == 0
    said = words("".join(capsys.readouterr()))
    assert "bubblewrap's own init" not in said and "not a user of their own" not in said  # this machine gives both
    monkeypatch.setattr(sandbox, "anchors_reason", lambda: "a run could not be forked into a sandbox: timed out")
    monkeypatch.setattr(sandbox, "users_reason", lambda: "a run could not be made a user of its own: it said ''")
    assert main(args) == 0
    said = words("".join(capsys.readouterr()))
    assert "warning: runs start under bubblewrap's own init here, not one of the loop's (a run could not be" in said
    assert "warning: runs are root in their sandbox here, with no capability left, not a user of their own" in said
    assert "Set AUTORESEARCH_RUN_USER=nobody to have `run` refuse to start instead" in said


@pytest.mark.parametrize(
    ("limit", "in_use", "each", "warned"), [(4096, 96, 1000, False), (1000, 96, 256, True), (1200, 950, 256, True)]
)
def test_a_loop_whose_runs_count_toward_a_low_ulimit_gives_each_run_its_share_and_says_so(
    limit: int, in_use: int, each: int, warned: bool, workspace: Workspace, monkeypatch, capsys
) -> None:
    """A loop not run as root under RHEL's `ulimit -u` of 4096 with 96 tasks of yours running: two workers' runs, the
    agent's turn and the rest get a quarter each, told to the runs and turns by their environment (tests/test_tasks.py
    shows why; this machine runs the tests as root, which RLIMIT_NPROC does not bind). Where that is less than the
    floor, 256, `run` warns: shares at the floor may take more than your limit leaves. BROKE, fixed (red team, helper
    115): with 950 of 1,200 in use it compared the floor's shares with the whole limit (768 < 1,200) and said nothing,
    though one run at the floor could hold all that was left (250)."""
    monkeypatch.setattr(tasks, "by_limit", lambda own_user=False: True)
    monkeypatch.setattr(tasks, "user_limit", lambda: limit)
    monkeypatch.setattr(tasks, "user_tasks", lambda uid: in_use)
    monkeypatch.setenv(tasks.TASKS_ENV, "")  # unset, as the loop sees it; put back after the test
    args = ["run", "--agent", "tune", "--max-experiments", "0", "--plain", "--workers", "2"]
    assert main([*args, "--workspace", str(workspace.root)]) == 0
    captured = capsys.readouterr()
    said = words(captured.out + captured.err)
    assert f"a run may have {each} tasks at once here, not 4096: your limit of {limit} processes" in said, said
    assert "2 runs at once, the agent's turn and your other processes share it" in said
    assert ("warning: a run may have" in said) is warned and ("set AUTORESEARCH_TASKS" in said)
    assert os.environ[tasks.TASKS_ENV] == str(each) and tasks.run_tasks() == each  # what the runs and turns read
    monkeypatch.setenv(tasks.TASKS_ENV, "8192")  # yours: each run gets it
    assert main([*args, "--workspace", str(workspace.root)]) == 0
    assert "tasks at once here" not in str(capsys.readouterr()) and os.environ[tasks.TASKS_ENV] == "8192"


def _ctrl_c_inside_a_lock(*args) -> str:
    lock = threading.Lock()
    try:
        raise KeyboardInterrupt  # as a Ctrl-C that lands in Condition.wait, while it takes its lock back
    finally:
        lock.release()  # the `with` around it releases a lock it no longer holds: RuntimeError


def test_a_ctrl_c_that_lands_in_a_thread_lock_reads_as_a_ctrl_c_and_other_runtime_errors_still_show(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("autoresearch.loop.status.status_text", _ctrl_c_inside_a_lock)
    assert main(["status", "--workspace", str(workspace.root)]) == 130
    assert "interrupted: run the same command again" in capsys.readouterr().err

    def broken(*args) -> str:
        threading.Lock().release()  # no Ctrl-C behind it: a bug, shown as one
        return ""

    monkeypatch.setattr("autoresearch.loop.status.status_text", broken)
    with pytest.raises(RuntimeError, match="release unlocked lock"):
        main(["status", "--workspace", str(workspace.root)])


@pytest.mark.parametrize(
    "refusal", [BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN)), RuntimeError("can't start new thread")]
)
def test_a_process_or_thread_the_system_refuses_the_loop_is_said_without_a_traceback(
    refusal: Exception, workspace: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under a loop not run as root whose runs' shares of `ulimit -u` are at the floor (which `run` warns of), a run
    can hold what is left while the loop starts git or an agent's turn: a traceback before."""

    def refused(*args) -> None:
        raise refusal

    monkeypatch.setattr("autoresearch.cli.run", refused)
    assert main(["run", "--agent", "tune", "--workspace", str(workspace.root)]) == 2
    err = words(capsys.readouterr().err)
    assert "the system refused autoresearch a new process or thread" in err and "raise `ulimit -u`" in err, err
    assert "Traceback" not in err


def test_the_loop_submit_started_says_what_resumes_it_when_stopped(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its log said "run the same command again": nobody typed the command (`submit` did, in the background)."""

    def stopped(*args) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("autoresearch.cli.run", stopped)
    assert main(["run", "--agent", "queue", "--workspace", str(workspace.root)]) == 130
    assert "interrupted: the next `autoresearch submit` (or `run --agent queue`) resumes" in capsys.readouterr().err
    # with its workers (a user's walk: `submit` without them started a one-worker loop, whose runs were refused)
    assert main(["run", "--agent", "queue", "--workers", "2", "--workspace", str(workspace.root)]) == 130
    said = "`autoresearch submit --workers 2` (or `run --agent queue --workers 2`) resumes"
    assert said in capsys.readouterr().err
    assert main(["run", "--agent", "tune", "--workspace", str(workspace.root)]) == 130
    assert "interrupted: run the same command again" in capsys.readouterr().err


def test_try_help_speaks_of_no_workers_which_try_has_not(capsys: pytest.CaptureFixture[str]) -> None:
    for command, workers in (("try", False), ("run", True)):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert ("several workers" in " ".join(capsys.readouterr().out.split())) is workers, command


def test_init_says_how_to_start_the_loop_from_a_shell_where_the_venv_is_not_active(monkeypatch, tmp_path) -> None:
    """BROKE, fixed: `init` said to run `autoresearch run`, which a shell whose venv is not active does not find (or
    finds another install's); and `python train.py` ran another Python, without torch (fresh-clone walkthrough)."""
    from autoresearch.cli import typed

    bin_dir = Path(sys.executable).absolute().parent
    monkeypatch.setenv("PATH", str(tmp_path))  # no venv on it
    assert typed("python", "train.py") == f"{sys.executable} train.py"
    ours = bin_dir / "autoresearch"
    expected = f"{ours} run" if ours.exists() else f"{sys.executable} -m autoresearch run"
    assert typed("autoresearch", "run") == expected
    monkeypatch.setenv("PATH", str(bin_dir))  # activated
    assert typed("python", "train.py") == "python train.py"
    assert typed("autoresearch", "run") == ("autoresearch run" if ours.exists() else expected)
