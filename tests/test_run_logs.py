"""The runs' logs are bounded in total: the oldest are cut to their ends, kept, in-flight and the newest stay whole."""

from __future__ import annotations

import os
from pathlib import Path

from autoresearch.loop import run_logs
from autoresearch.loop.experiment import Experiment
from autoresearch.vocabulary import Status

KIB = 1 << 10
CHATTY = b"step 0.1234\n" * (64 * KIB // 12)  # what a chatty run prints: 64 KiB


def experiment(exp_id: int, status: Status) -> Experiment:
    return Experiment(exp_id, "experiment", status, f"exp {exp_id}", "abc")


def write_log(runs: Path, name: str, size: int) -> Path:
    (runs / name).mkdir(parents=True, exist_ok=True)
    lines = b"".join(f"{name} line {i:06d}\n".encode() for i in range(size // 10))
    (runs / name / "log.txt").write_bytes(lines[len(lines) - size :])
    return runs / name / "log.txt"


def test_the_oldest_logs_are_cut_to_their_ends_until_all_fit_and_those_a_person_needs_stay_whole(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(run_logs, "NEWEST_WHOLE", 2)
    monkeypatch.setattr(run_logs, "TAIL", 8 * KIB)
    runs = tmp_path / "runs"
    statuses = [Status.KEEP, Status.DISCARD, Status.CRASH, Status.KEEP, Status.DISCARD, Status.RUNNING]
    statuses += [Status.DISCARD] * 4
    rows = [experiment(i, s) for i, s in enumerate(statuses, start=1)]
    logs = {e.id: write_log(runs, f"{e.id}-0", 100 * KIB) for e in rows}
    before = {i: log.read_bytes() for i, log in logs.items()}
    freed = run_logs.trim(runs, rows, max_bytes=700 * KIB)
    sizes = {i: log.stat().st_size for i, log in logs.items()}
    assert sum(sizes.values()) <= 700 * KIB and freed == 1000 * KIB - sum(sizes.values())
    whole = {1, 4, 6, 8, 9, 10}  # kept, kept, in flight, 8 (not needed to fit), the two newest
    assert {i for i in logs if logs[i].read_bytes() == before[i]} == whole
    cut = logs[2].read_text()
    first, rest = cut.split("\n", 1)
    assert first.startswith("[the first ") and "bytes of this log were cut" in first
    assert before[2].decode().endswith(rest) and len(rest) <= 8 * KIB and rest.startswith("2-0 line")  # whole lines
    assert int(first.split()[2]) == len(before[2]) - len(rest)
    assert sizes[8] == 100 * KIB  # the oldest first: once all fit, the rest stays whole
    assert run_logs.trim(runs, rows, max_bytes=700 * KIB) == 0  # under the cap: nothing more is cut


def test_where_cutting_to_the_tail_is_not_enough_the_oldest_are_cut_shorter(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(run_logs, "NEWEST_WHOLE", 0)
    monkeypatch.setattr(run_logs, "TAIL", 40 * KIB)
    monkeypatch.setattr(run_logs, "SHORT_TAIL", 4 * KIB)
    runs = tmp_path / "runs"
    rows = [experiment(i, Status.DISCARD) for i in range(1, 11)]
    logs = [write_log(runs, f"{e.id}-{run}", 100 * KIB) for e in rows for run in (0, 1)]
    run_logs.trim(runs, rows, max_bytes=300 * KIB)
    assert sum(log.stat().st_size for log in logs) <= 300 * KIB
    assert logs[0].stat().st_size < 5 * KIB and logs[-1].stat().st_size > 30 * KIB


def test_a_link_or_fifo_in_place_of_a_log_is_neither_followed_nor_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"x" * (64 * KIB))
    runs = tmp_path / "runs"
    (runs / "1-0").mkdir(parents=True)
    (runs / "1-0" / "log.txt").symlink_to(outside)
    (runs / "2-0").mkdir()
    os.mkfifo(runs / "2-0" / "log.txt")
    (runs / "3-0").symlink_to(tmp_path)  # a run's folder that is a link: not looked into
    write_log(runs, "4-0", 64 * KIB)
    rows = [experiment(i, Status.DISCARD) for i in range(1, 5)] + [experiment(i, Status.KEEP) for i in range(5, 30)]
    run_logs.trim(runs, rows, max_bytes=KIB)
    assert outside.read_bytes() == b"x" * (64 * KIB) and (runs / "1-0" / "log.txt").is_symlink()
    assert (runs / "4-0" / "log.txt").stat().st_size < 17 * KIB


def test_a_second_name_for_a_runs_folder_cuts_no_log_of_a_kept_experiment_nor_one_outside(tmp_path: Path) -> None:
    """BROKE, fixed: a run's folder was found by any name that reads as `<exp>-<run>` ("05-0", "٥-0"), and its log then
    cut through the name the loop writes ("5-0"), following it where it was a link: a process that can write the
    runs' folder (an unconfined run, an agent driving `submit` from its shell) had the log of a kept experiment cut,
    or any file named log.txt outside, by making "5-0" a link there and leaving a large log in "05-0"."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "log.txt").write_bytes(CHATTY)
    runs = tmp_path / "runs"
    kept = write_log(runs, "1-0", 64 * KIB)
    for alias, target in (("05-0", runs / "1-0"), ("٦-0", outside)):  # 5 and 6: discarded, old
        write_log(runs, alias, 512 * KIB)
        (runs / f"{int(alias.split('-')[0])}-0").symlink_to(target)
    rows = [experiment(1, Status.KEEP)] + [experiment(i, Status.DISCARD) for i in range(2, 40)]
    run_logs.trim(runs, rows, max_bytes=KIB)
    assert kept.read_bytes() == write_log(tmp_path / "again", "1-0", 64 * KIB).read_bytes()
    assert (outside / "log.txt").read_bytes() == CHATTY and not (outside / "log.txt.cut").exists()


def test_a_folder_where_the_cut_is_written_stops_neither_trim_nor_the_cuts_of_other_logs(tmp_path: Path) -> None:
    """BROKE, fixed: a folder `log.txt.cut` left in a run's folder (where the cut log is written first) made `trim`
    raise IsADirectoryError after every verdict: the loop stopped, and stopped again at each start."""
    runs = tmp_path / "runs"
    write_log(runs, "1-0", 64 * KIB)
    (runs / "1-0" / "log.txt.cut" / "x").mkdir(parents=True)
    other = write_log(runs, "2-0", 64 * KIB)
    rows = [experiment(i, Status.DISCARD) for i in range(1, 3)] + [experiment(i, Status.KEEP) for i in range(3, 30)]
    run_logs.trim(runs, rows, max_bytes=KIB)
    assert other.stat().st_size < 17 * KIB
