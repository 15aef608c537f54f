"""What every agent gets (a `Context`) and gives back (a `Proposal`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from autoresearch.agents import fence
from autoresearch.errors import AutoresearchError
from autoresearch.vocabulary import Status


class ProposalError(AutoresearchError):
    """The agent could not produce a usable proposal (unparseable answer, edit that does not apply,
    an API that keeps failing). The loop records it and goes on, pausing longer after each failure in a
    row; a `fatal` one (a wrong key or model name: retrying cannot help) stops the loop."""

    def __init__(self, message: str, hint: str | None = None, *, usage: Usage | None = None, fatal: bool = False):
        super().__init__(message, hint)
        self.usage = usage or Usage()
        self.fatal = fatal


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None  # None when the model's price is unknown

    def __add__(self, other: Usage) -> Usage:
        cost = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens, cost)


@dataclass(frozen=True)
class PastExperiment:
    """One finished experiment as an agent sees it."""

    id: int
    status: Status  # KEEP, DISCARD or CRASH
    description: str
    val_bpb: float | None
    diff: str  # unified diff of train.py against the best it was made from
    source: str  # train.py as it ran
    reason: str = ""


@dataclass(frozen=True)
class Context:
    workspace: Path
    program: str  # program.md: the human's research strategy
    train_py: str  # the current best train.py, which the proposal changes
    best_bpb: float | None
    noise: float | None  # run-to-run standard deviation of val_bpb measured on the baseline
    history: list[PastExperiment] = field(default_factory=list)  # oldest first
    last_crash: str | None = None  # log tail of the latest crash: untrusted text
    in_flight: list[PastExperiment] = field(default_factory=list)  # being trained now: propose something else
    unseen: int = 0  # other proposals asked for at the same time, not back yet: they cannot be shown
    named: Path | None = None  # the path you named the workspace by, its links kept (Workspace.named): pinned in a turn


@dataclass(frozen=True)
class Proposal:
    description: str  # one line: the hypothesis this experiment tests
    source: str  # the complete new train.py
    usage: Usage = Usage()

    def __post_init__(self) -> None:
        # One line of printable text, whatever the agent said: a NUL in it ended the loop where git took it as the
        # commit's message (red team).
        if not self.description.isprintable():
            printable = "".join(ch if ch.isprintable() else " " for ch in self.description)
            object.__setattr__(self, "description", printable.strip())


class Agent(Protocol):
    name: str  # "tune", "anthropic", ...
    model: str  # the model or tool behind it, for the ledger
    # Optional, False when absent: `propose` only reads its context and answers (no file touched, no state kept
    # between calls), so that with several workers it may be asked several times at once (loop/answers.py).
    answers_only: bool
    # Optional, `not answers_only` when absent: the agent runs programs of its own that could write files, so its
    # turn is watched (loop/watch.py): the workspace, and the files the runs read outside it (loop/environment.py).
    # `tune`, Optuna in the loop's own process, runs none and writes nothing: its turn is not watched.
    shell: bool

    def propose(self, context: Context) -> Proposal:
        """A new train.py to try. Raises ProposalError when it cannot make one."""

    def preflight(self, workspace: Path) -> list[str]:
        """Check, cheaply and before the baseline trains, that the agent can work at all (its program
        exists, its key and model are accepted). Raises a fatal ProposalError for what cannot heal by
        waiting; returns warnings for what may (a server that does not answer yet)."""


def has_shell(agent: Agent) -> bool:
    """Whether `agent` runs programs of its own (`shell`, else not `answers_only`): its turn is watched, and a Ray
    cluster without token authentication is open to it."""
    return bool(getattr(agent, "shell", not getattr(agent, "answers_only", False)))


def preflight(agent: Agent, workspace: Path, warn: Callable[[str], None], named: Path | None = None) -> None:
    """Run `agent.preflight` if the agent has one: its warnings go to `warn`, a fatal error propagates
    (an AutoresearchError: the command line prints it and exits 2). For an agent with a shell: the ports
    AUTORESEARCH_AGENT_PORTS lists, the folders AUTORESEARCH_AGENT_WRITABLE does, that its turns' fence can be set up
    (fatal where not), and a warning where this kernel cannot fence its connections (agents/fence.py) or give it
    temporary folders of its own (agents/namespace.py), or keep a link on `named`, the path you named the workspace by,
    from being turned to a copy of its own (no namespace here to pin it in)."""
    if has_shell(agent):
        # not at the top: they import the Ray executor, which imports this
        from autoresearch.agents import egress, namespace, places

        try:
            fence.allowed_ports(os.environ)
            egress.allowed(os.environ)
            places.agent_writable(os.environ, workspace)
        except ValueError as err:
            hint = (
                f"e.g. {fence.PORTS_ENV}=8000,11434, {egress.HOSTS_ENV}=arxiv.org,*.example.com:8443, "
                f"{places.WRITABLE_ENV}=~/.gemini:~/.local/share/opencode"
            )
            raise ProposalError(str(err), hint=hint, fatal=True) from None
        if (why := fence.fails_here(os.environ)) is not None:
            raise ProposalError(
                f"an agent with a shell cannot be fenced on this machine: {why}",
                hint="its turns need a kernel with seccomp filtering (every mainstream Linux has it; WSL1 has not): "
                "use WSL2 or another machine, or an agent without a shell (anthropic, openai, tune)",
                fatal=True,
            )
        if (why := fence.unavailable_reason()) is not None:
            warn(
                f"warning: the agent's connections cannot be fenced ({why}): a server of yours on this machine that "
                "runs what it is sent over TCP (Jupyter, a Ray dashboard) is in its reach"
            )
        if not namespace.isolates_network():
            warn(
                "warning: the agent's turns cannot have a network of their own here (no user namespace can be made "
                "with one): they reach any host on the ports above, not only the model APIs, and so can fetch a "
                "public dataset's validation text"
            )
        if (why := namespace.temporary_unavailable()) is not None:
            warn(
                f"warning: the agent cannot have temporary folders of its own ({why}): what it leaves in /tmp, "
                "/var/tmp or /dev/shm stays there for the programs of yours that look there"
            )
        elif shared := namespace.shared_for_a_mount():
            warn(
                f"warning: the agent shares {', '.join(map(str, shared))} with you while something is mounted in it "
                "(no overlay can be made of it): what it leaves there stays for the programs of yours that look there"
            )
        if named is not None and (links := namespace.on_the_way(named)[0]) and not namespace.can_pin():
            warn(
                f"warning: you named the workspace through a link ({links[0]}) that the agent's turns cannot be kept "
                "from turning (no namespace here to pin it in): one may point it at a copy of the workspace, with a "
                f"ledger of its own, which the next start by the same path opens. Name it by its real path: {workspace}"
            )
    check = getattr(agent, "preflight", None)
    if check is None:
        return
    for warning in check(workspace):
        warn(f"warning: {warning}")
