"""`autoresearch init` checks everything before it writes: every refusal exits 2 with a clear message, no
traceback, and leaves no workspace file, no .git and no prepared data behind."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from autoresearch.cli import main
from autoresearch.config.presets import get_preset
from autoresearch.data.prepare import prepare
from autoresearch.data.sources.local import bad_fraction, check_corpus
from autoresearch.errors import ConfigError, DataError
from autoresearch.workspace import init as init_module
from autoresearch.workspace.constants import read_constants
from autoresearch.workspace.git import Git, GitError
from autoresearch.workspace.init import check_init, create_workspace

SENTENCE = "The quick brown fox jumps over the lazy dog, and then it rests under a tree. "


def words(text: str) -> str:
    return " ".join(text.split())


def init_args(ws: Path, corpus_dir: Path, *more: str) -> list[str]:
    return ["init", str(ws), "--preset", "tiny", "--dataset", "python-source", "--root", str(corpus_dir), *more]


def prepared_dirs(cache: Path) -> list[Path]:
    return sorted((cache / "data").glob("*/*")) if (cache / "data").exists() else []


@pytest.mark.parametrize("budget", ["0", "-5", "1e9", "nan", "inf", "soon"])
def test_a_bad_budget_stops_before_any_work(
    budget: str, corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws, cache = tmp_path / "ws", tmp_path / "cache"
    with pytest.raises(SystemExit) as stop:
        main([*init_args(ws, corpus_dir, "--cache-dir", str(cache)), f"--budget={budget}"])
    assert stop.value.code == 2
    err = words(capsys.readouterr().err)
    assert "--budget" in err and ("between 1 and 86400 seconds" in err or "not a number of seconds" in err)
    assert not ws.exists() and not cache.exists()  # nothing prepared, nothing written


def test_a_bad_budget_exits_2_without_a_traceback(subprocess_env: dict[str, str], tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "autoresearch", "init", str(tmp_path / "ws"), "--preset", "tiny", "--budget", "0"],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "between 1 and 86400 seconds, got 0" in words(proc.stderr) and "Traceback" not in proc.stderr
    assert not (tmp_path / "ws").exists()


def test_a_folder_with_files_is_refused_naming_a_new_one(
    corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = tmp_path / "research"
    ws.mkdir()
    (ws / "notes.txt").write_text("my own notes\n")
    (tmp_path / "research-2").mkdir()  # taken too: the hint names the next free one
    cache = tmp_path / "cache"
    assert main([*init_args(ws, corpus_dir), "--cache-dir", str(cache)]) == 2
    assert prepared_dirs(cache) == []  # refused before any data was prepared
    err = words(capsys.readouterr().err)
    assert "already exists and is not empty (it holds notes.txt)" in err
    assert "choose a new directory" in err and f"autoresearch init {tmp_path / 'research-3'}" in err
    assert [p.name for p in ws.iterdir()] == ["notes.txt"] and (ws / "notes.txt").read_text() == "my own notes\n"


def test_a_folder_inside_a_workspace_is_refused_naming_one_outside(
    corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """BROKE, fixed (a user's walk through the README): `cd demo && autoresearch init sub` made a workspace inside the
    workspace, a folder of it that is not train.py: every `try` there was refused for "sub/" since."""
    cache = tmp_path / "cache"
    assert main([*init_args(tmp_path / "demo", corpus_dir), "--cache-dir", str(cache)]) == 0
    capsys.readouterr()
    for inner in (tmp_path / "demo" / "sub", tmp_path / "demo" / "notes" / "sub"):
        assert main([*init_args(inner, corpus_dir), "--cache-dir", str(cache)]) == 2
        err = words(capsys.readouterr().err)
        assert f"lies inside the workspace {tmp_path / 'demo'}, where only train.py may change" in err
        assert f"autoresearch init {tmp_path / 'sub'}`" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "demo").iterdir() if p.name != ".autoresearch") == [
        ".git",
        ".gitignore",
        "autoresearch.json",
        "program.md",
        "train.py",
    ]


@pytest.mark.parametrize("given", [".", "", "..", "/"])
def test_the_folder_one_is_in_with_files_is_refused_naming_a_new_one(
    given: str,
    corpus_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    here = tmp_path / "research" / "inner"
    here.mkdir(parents=True)
    (here / "notes.txt").write_text("my own notes\n")
    monkeypatch.chdir(here)
    cache = tmp_path / "cache"
    assert main([*init_args(Path(given), corpus_dir), "--cache-dir", str(cache)]) == 2  # no ValueError from a hint
    err = words(capsys.readouterr().err)
    assert "already exists and is not empty" in err and "choose a new directory" in err
    named = {".": here, "": here, "..": here.parent, "/": None}[given]
    if named is not None:
        assert f"autoresearch init {named.with_name(named.name + '-2')}`" in err
    assert prepared_dirs(cache) == []


def test_a_file_in_place_of_the_folder_is_refused(corpus_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ws").write_text("x")
    assert main(init_args(tmp_path / "ws", corpus_dir)) == 2
    assert (tmp_path / "ws").read_text() == "x"


@pytest.mark.parametrize("where", ["under-a-file", "in-proc"])
def test_a_directory_that_cannot_be_made_is_refused_before_any_data(
    where: str, corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes").write_text("x")
    ws = tmp_path / "notes" / "ws" if where == "under-a-file" else Path("/proc/autoresearch-test-ws")
    cache = tmp_path / "cache"
    assert main([*init_args(ws, corpus_dir), "--cache-dir", str(cache)]) == 2
    assert f"cannot make {ws}" in words(capsys.readouterr().err)
    assert prepared_dirs(cache) == [] and not ws.exists()


def test_an_empty_folder_is_fine(corpus_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    assert main(init_args(tmp_path / "ws", corpus_dir, "--budget", "5")) == 0
    assert (tmp_path / "ws" / "train.py").is_file() and Git(tmp_path / "ws").is_repo()


def test_an_unknown_preset_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws, cache = tmp_path / "ws", tmp_path / "cache"
    assert main(["init", str(ws), "--preset", "h200", "--dataset", "python-source", "--cache-dir", str(cache)]) == 2
    assert "unknown preset 'h200'" in words(capsys.readouterr().err)
    assert not ws.exists() and prepared_dirs(cache) == []


def test_a_tag_git_cannot_take_is_refused(corpus_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    assert main([*init_args(tmp_path / "ws", corpus_dir), "--tag", "my tag..", "--cache-dir", str(cache)]) == 2
    assert "cannot name a git branch" in words(capsys.readouterr().err)
    assert prepared_dirs(cache) == []
    assert not (tmp_path / "ws").exists()


def test_without_git_init_says_to_install_it(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh machine without git (a slim container): a clear error before anything is written, no traceback."""
    from autoresearch.workspace import git as gits

    cache = tmp_path / "cache"
    monkeypatch.setenv("PATH", str(tmp_path / "no-programs-here"))
    gits.program.cache_clear()
    try:
        assert main([*init_args(tmp_path / "ws", corpus_dir), "--cache-dir", str(cache)]) == 2
    finally:
        gits.program.cache_clear()
    err = words(capsys.readouterr().err)
    assert "git is not installed" in err and "install git" in err and "Traceback" not in err, err
    assert prepared_dirs(cache) == [] and not (tmp_path / "ws").exists()


def test_a_gpu_preset_is_refused_without_cuda(
    tiny_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h100 = get_preset("h100")
    monkeypatch.setattr(init_module, "cuda_available", lambda: False)
    with pytest.raises(ConfigError, match="the h100 preset needs a CUDA GPU and this machine has no CUDA GPU") as err:
        create_workspace(tmp_path / "ws", h100, "python-source", tiny_prepared, None)
    assert "--preset tiny" in str(err.value)
    assert not (tmp_path / "ws").exists()
    monkeypatch.setattr(init_module, "cuda_available", lambda: True)
    check_init(tmp_path / "ws", h100, None)  # a CUDA machine may
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "cpu")
    with pytest.raises(ConfigError, match=r"AUTORESEARCH_DEVICE=cpu sends train\.py to another device"):
        check_init(tmp_path / "ws", h100, None)
    monkeypatch.setattr(init_module, "cuda_available", lambda: pytest.fail("tiny needs no CUDA check"))
    check_init(tmp_path / "ws", get_preset("tiny"), None)


def compile_setting(ws: Path) -> object:
    return read_constants((ws / "train.py").read_text())["COMPILE"].value


@pytest.mark.parametrize("lacking", ["compiler", "headers"])
def test_without_a_cpu_compiler_train_py_is_set_not_to_compile_and_init_says_how_to_get_one(
    lacking: str, tiny_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "cpu")
    with caplog.at_level(logging.WARNING):
        create_workspace(tmp_path / "with", get_preset("tiny"), "python-source", tiny_prepared, None)
    assert compile_setting(tmp_path / "with") is True and caplog.text == ""  # this machine has both
    if lacking == "compiler":
        monkeypatch.setenv("CXX", "no-such-compiler++")
    else:
        real = sysconfig.get_paths
        monkeypatch.setattr(sysconfig, "get_paths", lambda: {**real(), "include": str(tmp_path / "nowhere")})
    with caplog.at_level(logging.WARNING):
        create_workspace(tmp_path / "without", get_preset("tiny"), "python-source", tiny_prepared, None)
    assert compile_setting(tmp_path / "without") is False
    said = words(caplog.text)
    why = "no C++ compiler (no-such-compiler++)" if lacking == "compiler" else "Python's C headers are missing"
    assert why in said
    assert "apt-get install g++ python3-dev" in said and "set COMPILE = True" in said
    caplog.clear()
    monkeypatch.setenv("AUTORESEARCH_DEVICE", "cuda")  # a GPU's compiler is not this check's business
    with caplog.at_level(logging.WARNING):
        create_workspace(tmp_path / "gpu", get_preset("tiny"), "python-source", tiny_prepared, None)
    assert compile_setting(tmp_path / "gpu") is True and caplog.text == ""


@pytest.mark.parametrize("budget", [0.0, -1.0, 10**7])
def test_create_workspace_checks_the_budget_before_writing(budget: float, tiny_prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the budget must be between"):
        create_workspace(tmp_path / "ws", get_preset("tiny"), "python-source", tiny_prepared, budget)
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize("pre_existing", [False, True])
def test_a_failure_while_writing_removes_what_was_written(
    pre_existing: bool, tiny_prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "new" / "ws"
    if pre_existing:
        ws.mkdir(parents=True)

    def broken_commit(self: Git, message: str, *paths: str) -> str:
        raise GitError("git commit failed: simulated")

    monkeypatch.setattr(Git, "commit", broken_commit)
    with pytest.raises(GitError, match="simulated"):
        create_workspace(ws, get_preset("tiny"), "python-source", tiny_prepared, None)
    if pre_existing:
        assert list(ws.iterdir()) == []  # emptied again, kept
    else:
        assert not (tmp_path / "new").exists()  # the directories init made are gone too


# -- local corpora -----------------------------------------------------------------------------------


def test_random_bytes_named_txt_are_refused_before_anything_is_prepared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus, cache, ws = tmp_path / "corpus", tmp_path / "cache", tmp_path / "ws"
    corpus.mkdir()
    (corpus / "a.txt").write_text(SENTENCE * 20_000)
    (corpus / "b.txt").write_bytes(random.Random(0).randbytes(2_000_000))
    args = ["init", str(ws), "--preset", "tiny", "--dataset", f"local:{corpus}", "--cache-dir", str(cache)]
    assert main(args) == 2
    err = words(capsys.readouterr().err)
    assert f"{corpus / 'b.txt'} is not text" in err and "convert it to UTF-8" in err
    assert not ws.exists() and prepared_dirs(cache) == []


def test_non_printable_utf8_is_refused_and_a_little_noise_is_not(tmp_path: Path) -> None:
    assert bad_fraction(b"\x01\x02\x03\x00" * 1000) == 1.0  # valid UTF-8, all control characters
    assert bad_fraction(random.Random(1).randbytes(4096)) > 0.5
    noisy = (SENTENCE * 100).encode() + b"\xff\xfe" + (SENTENCE * 100).encode()
    assert 0 < bad_fraction(noisy) < 0.01
    assert bad_fraction("Größe, 東京, naïve café\t\r\n".encode() * 100) == 0.0
    cut = ("é" * (64 * 1024)).encode()[: 64 * 1024 - 1] + b"\xc3"  # a character cut at the sample's end
    assert bad_fraction(cut[: 64 * 1024]) == 0.0
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.md").write_bytes(b"\x00\x07" * 50_000)
    with pytest.raises(DataError, match=r"x\.md is not text"):
        check_corpus(tmp_path / "c", 1000)


def test_a_jsonl_file_that_is_not_utf8_is_a_data_error(tmp_path: Path, mini_preset) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(SENTENCE * 2000)
    (tmp_path / "c" / "b.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"b.jsonl:2: not UTF-8 text"):
        prepare(f"local:{tmp_path / 'c'}", mini_preset, tmp_path / "cache")


def test_a_corpus_smaller_than_the_validation_set_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(SENTENCE * 100)
    with pytest.raises(DataError, match="corpus too small") as err:
        prepare(f"local:{tmp_path / 'c'}", get_preset("tiny"), tmp_path / "cache")
    assert "hint:" in str(err.value)
    assert not (tmp_path / "cache").exists()


def test_a_tiny_corpus_is_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_text(SENTENCE * 5000)  # ~380 KB
    with caplog.at_level(logging.WARNING):
        check_corpus(tmp_path / "c", val_bytes=100_000)
    assert "is tiny" in caplog.text and "memorisation" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_corpus(tmp_path / "c", val_bytes=10_000)
    assert caplog.text == ""


def test_the_sample_spreads_over_many_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "c"
    root.mkdir()
    for i in range(600):
        (root / f"{i:04d}.txt").write_text(SENTENCE)
    opened: list[str] = []
    real_open = Path.open

    def spy(self: Path, *args, **kwargs):
        opened.append(self.name)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    check_corpus(root, val_bytes=1000)
    assert 200 <= len(opened) <= 256 and opened[0] == "0000.txt" and int(opened[-1][:4]) > 590
