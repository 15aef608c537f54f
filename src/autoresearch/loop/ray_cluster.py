"""Joining a Ray cluster for `autoresearch run --ray [ADDRESS]`, or starting one of the loop's own, and leaving it.

The Ray the loop starts (no address) asks every driver and worker that joins it for a token (Ray's token
authentication), one the loop makes and hands to its own processes only in their environment: an agent's shell
shares this machine's network, and a task it submitted to the loop's Ray would run outside its namespace, as the
user, where the validation data can be read. The agent's namespace covers the rest (`hidden_from_agents`). A cluster
the user runs is as safe as its own settings: one without token authentication takes tasks from anyone who reaches
it, and the loop says so at the start (`open_to_agent`).
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from autoresearch.agents.base import has_shell
from autoresearch.errors import AutoresearchError
from autoresearch.loop.workers import Device
from autoresearch.signals import deferred

LOOPBACK = ("127.0.0.1", "localhost", "::1")  # what Ray replaces with this node's address before it connects
CONNECT_TIMEOUT_S = 10.0  # for a cluster's address to answer at all (a firewall that drops packets: no answer)
AUTH_MODE, AUTH_TOKEN, AUTH_TOKEN_PATH = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"  # Ray's variables


def ray_module():
    try:
        import ray
    except ImportError:
        raise AutoresearchError("--ray needs Ray, which is not installed", hint=install_hint()) from None
    return ray


def install_hint() -> str:
    """The command that installs the Ray autoresearch's `ray` extra names into this Python. Not `pip install
    'autoresearch[ray]'`: autoresearch is installed from its checkout, and that name on PyPI is not this project."""
    try:
        wanted = [r.split(";")[0].strip() for r in metadata.requires("autoresearch") or () if 'extra == "ray"' in r]
    except metadata.PackageNotFoundError:  # run from a source tree, never installed
        wanted = []
    return f"{shlex.quote(sys.executable)} -m pip install {shlex.quote(wanted[0] if wanted else 'ray')}"


def connect(address: str | None, accelerator: str | None = None) -> int:
    """Join the Ray cluster at `address` (or RAY_ADDRESS; none: start a Ray of this loop's own on this machine, not
    the one Ray itself would join there); its GPU count, of the `accelerator` type (a Ray accelerator type) if given:
    AutoresearchError where it has none (its runs would wait for ever)."""
    ray = ray_module()
    address = address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        if not address:
            _own_token()
        elif why := unanswered(address):  # Ray would try for many minutes, saying only so in its own log lines
            raise AutoresearchError(
                f"cannot reach the Ray cluster at {address}: {why}",
                hint="check the address (`ray status` on the head node prints it), or start the cluster there with "
                "`ray start --head`; `--ray auto` joins the one `ray start` made on this machine",
            )
        try:
            # A cluster of one's own needs no dashboard; one that exists keeps its settings. Ray's "Connecting to ..."
            # lines would interleave with the loop's own; its warnings still show.
            own = {} if address else {"include_dashboard": False}
            ray.init(address=address or "local", log_to_driver=False, logging_level=logging.WARNING, **own)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            hint = "start it with `ray start --head` (and `ray start --address=HEAD:6379` on the other machines)"
            if address:  # something answers there: a cluster whose token this process lacks is refused so too
                hint += (
                    "; where it runs with token authentication, give this process its token (RAY_AUTH_TOKEN, or "
                    "RAY_AUTH_TOKEN_PATH: the head's ~/.ray/auth_token)"
                )
            raise AutoresearchError(
                f"cannot reach the Ray cluster at {address}: {exc}" if address else f"cannot start Ray here: {exc}",
                hint=hint,
            ) from None
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus < 1:
        hint = "every run is a Ray task that needs one GPU"
        if not address:
            hint += "; with no address the loop starts a Ray of its own: `--ray auto` joins the one `ray start` made"
        raise AutoresearchError("the Ray cluster has no GPU", hint=hint)
    if accelerator:
        return _gpus_of_type(ray, accelerator)
    return gpus


def unanswered(address: str, timeout: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why nothing answers at a Ray address `host:port` (`ray://host:port` too) where Ray would call it; None where
    something does, or where the address names no port (`auto`, `local`: Ray finds those itself, at once)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return None
    dialled = host.strip("[]")
    if not address.startswith("ray://") and dialled in LOOPBACK:  # Ray calls this node's own address in its place
        dialled = ray_module().util.get_node_ip_address()
    try:
        socket.create_connection((dialled, int(port)), timeout=timeout).close()
    except OSError as exc:
        where = f"{host}:{port}" + (f" (which Ray calls at {dialled})" if dialled != host.strip("[]") else "")
        return f"nothing answers at {where}: {exc.strerror or str(exc) or type(exc).__name__}"
    return None


def disconnect() -> None:
    """Leave the Ray cluster; a Ray of the loop's own stops, which takes it a second or two. A Ctrl-C or SIGTERM
    meanwhile takes effect once it has (BROKE, fixed: a second Ctrl-C during Ray's own shutdown at exit printed a
    traceback and left two of its processes running)."""
    ray = ray_module()
    if ray.is_initialized():
        with deferred(signal.SIGINT, signal.SIGTERM):
            ray.shutdown()


def _gpus_of_type(ray, accelerator: str) -> int:
    """The GPUs of the living nodes whose accelerator type (Ray's resource `accelerator_type:<type>`) is `accelerator`;
    AutoresearchError, naming the types there are, where there are none."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    prefix = "accelerator_type:"
    gpus = sum(int(found.get("GPU", 0)) for found in nodes if found.get(prefix + accelerator, 0) > 0)
    if gpus < 1:
        types = sorted({name.removeprefix(prefix) for found in nodes for name in found if name.startswith(prefix)})
        raise AutoresearchError(
            f"no node of the Ray cluster has a GPU of type {accelerator} (--accelerator): its runs would wait for ever",
            hint=(f"the types its nodes have: {', '.join(types)}" if types else "its nodes name no accelerator type")
            + " (Ray's names, as `ray status` shows them); leave --accelerator out to train on any GPU",
        )
    return gpus


def _own_token() -> None:
    """Token authentication for the Ray this process is about to start, with a fresh token in this process's
    environment (its Ray processes inherit it; an agent's is without it). Ray's own default, where it has one, writes
    a token to ~/.ray/auth_token, which an agent could read. Not where the user turned it off (RAY_AUTH_MODE) or where
    this Ray has none (an older one): `open_to_agent` says so then."""
    if os.environ.get(AUTH_MODE, "token").strip().lower() != "token":
        return
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:
        return
    os.environ[AUTH_MODE] = "token"
    os.environ[AUTH_TOKEN] = secrets.token_hex(32)
    Config.initialize("")  # Ray read RAY_AUTH_MODE when it was imported: read it again
    AuthenticationTokenLoader.instance().reset_cache()


def open_to_agent(agent) -> str | None:
    """What the loop warns of at its start where `agent` has a shell (agents/base.py, `has_shell`) and the Ray
    cluster this process joined would run a task it sent: one without token authentication. None where neither."""
    if agent is None or not has_shell(agent):
        return None
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode
    except ImportError:
        why = f"Ray {ray_module().__version__} has no token authentication"
    else:
        if get_authentication_mode() == AuthenticationMode.TOKEN:
            return None
        why = "the Ray cluster runs without token authentication"
    return (
        f"warning: {why}: during its turn the {agent.name} agent, whose shell shares this machine's network, could "
        "send it a task, which runs outside the agent's namespace as whoever started the Ray node, where the "
        "validation data can be read. Turn on Ray's token authentication (RAY_AUTH_MODE=token on every node and for "
        "this loop), or use an agent without a shell"
    )


def hidden_from_agents(env: Mapping[str, str]) -> list[Path]:
    """What of Ray an agent's namespace covers (agents/namespace.py), where it exists: the token files a driver
    joins a cluster with (RAY_AUTH_TOKEN_PATH's, ~/.ray), and Ray's folder on this machine: `ray_current_cluster`
    (where `ray.init(address="auto")` looks), and each session's sockets of the node's raylet and object store (which
    may hold the data sent to nodes). The token itself, RAY_AUTH_TOKEN, is not in the agent's environment."""
    home = Path(env.get("HOME") or Path.home())
    temp = env.get("RAY_TMPDIR") or (env.get("TMPDIR") if sys.platform.startswith("linux") else None) or "/tmp"
    places = [home / ".ray", Path(temp) / "ray", *([Path(env[AUTH_TOKEN_PATH])] if env.get(AUTH_TOKEN_PATH) else [])]
    return [p.absolute() for p in places if p.exists()]


def ray_devices(count: int) -> list[Device]:
    """One worker per GPU of the cluster; Ray, not the worker, picks the GPU of each run."""
    return [Device(f"ray {i}", {}) for i in range(count)]
