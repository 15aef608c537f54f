"""results.tsv, the reference's table: one line per finished experiment, written from the ledger (which it follows,
never leads), read to tell a workspace's history and to rebuild a lost ledger."""

from __future__ import annotations

from pathlib import Path

from autoresearch.errors import LedgerError
from autoresearch.files import read_regular, write_text_atomic
from autoresearch.vocabulary import IN_FLIGHT, Status
from autoresearch.workspace.disk import disk_full_is_an_error

NAME = "results.tsv"
HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
LIMIT = 1 << 30  # a line is about 100 bytes: ten million experiments


def _not_a_tsv(message: str) -> LedgerError:
    return LedgerError(
        message,
        hint="move it away (e.g. `mv results.tsv results.tsv.away`) and run the command again: nothing is lost, the "
        "loop writes results.tsv anew from its ledger (and `autoresearch rebuild-ledger` remakes a lost ledger from "
        "git and the runs' results)",
    )


def read(workspace: Path) -> str:
    """results.tsv's text, "" where there is none; bytes that are no UTF-8 read as U+FFFD. LedgerError for what
    cannot be read as a file: a folder, or a FIFO (which a read would wait on for ever)."""
    path = workspace / NAME
    try:
        data = read_regular(path, LIMIT)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise _not_a_tsv(f"cannot read {path}: {exc.strerror} (a folder or a FIFO is in its place)") from None
    except ValueError:
        raise _not_a_tsv(f"cannot read {path}: it is over {LIMIT >> 20} MiB") from None
    return data.decode(errors="replace")


def written_by_loop(fields: list[str]) -> bool:
    """Whether a line's tab-separated `fields` are those of a line the loop writes (a finished experiment)."""
    return len(fields) == 5 and fields[3] in (Status.KEEP, Status.DISCARD, Status.CRASH)


def listed(workspace: Path) -> int:
    """How many lines of results.tsv are ones the loop writes, not lines pasted in."""
    return sum(written_by_loop(line.split("\t")) for line in read(workspace).splitlines()[1:])


def write(workspace: Path, experiments: list) -> None:
    """results.tsv anew (atomically) from the ledger's `experiments`, one line per finished one."""
    lines = [HEADER]
    for exp in experiments:
        if exp.status in IN_FLIGHT:
            continue
        bpb = f"{exp.val_bpb:.6f}" if exp.val_bpb is not None else "0.000000"
        mem = f"{exp.memory_gb:.1f}" if exp.memory_gb is not None else "0.0"
        desc = " ".join(exp.description.split())
        lines.append(f"{(exp.commit or '')[:7]}\t{bpb}\t{mem}\t{exp.status}\t{desc}\n")
    tsv = workspace / NAME
    if tsv.is_dir() and not tsv.is_symlink():  # a file cannot replace it; a FIFO or a link is replaced
        raise _not_a_tsv(f"cannot write {tsv}: a folder is in its place")
    with disk_full_is_an_error("writing results.tsv"):
        write_text_atomic(tsv, "".join(lines), workspace / f"{NAME}.tmp")
