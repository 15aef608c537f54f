"""What a shell agent's processes may connect to, and the CPUs they run on: Landlock, the Linux security module,
and a CPU pin, run as a launcher.

The agent shares your network (its LLM is on the internet), so a server of yours on this machine was in its reach:
a Jupyter server, whose token is in your home, runs the code it is sent, as you, outside the agent's namespace (where
the data can be read and nothing ends with its turn); so do a Ray dashboard's job API, a Docker daemon on TCP, a
database with `COPY ... TO PROGRAM`, and, through an abstract socket (one with no file to hide), an X server or a
D-Bus session. A user namespace of its own would cut the agent off from the internet too. Landlock cuts finer, and
needs no privilege: the turn's command starts through this file (`python fence.py PORTS CPUS TASKS -- COMMAND...`),
which restricts itself, then runs the command, and everything it starts inherits the restriction for good.

- TCP connections (Linux 6.7, Landlock ABI 4) only to the ports an agent needs: DNS, HTTP and HTTPS (ALWAYS), the
  ports of the endpoints and proxies its environment names (`allowed_ports`: `OPENAI_BASE_URL=http://localhost:11434`
  for a local server), and those in AUTORESEARCH_AGENT_PORTS. Ports, not addresses: a server of yours on port 443 of
  this machine stays in reach, and a server anywhere on another port is out of it.
- Abstract Unix sockets and signals (Linux 6.12, ABI 6) only within the turn: not X11's `@/tmp/.X11-unix/X0`, not
  a D-Bus session's, and no signal to a process the turn did not start.

- What Landlock's TCP rule does not see (`side_doors`, a seccomp filter, where the architecture is one it knows):
  `sendto` with MSG_FASTOPEN (TCP Fast Open connects as it sends), a socket of another protocol than TCP, UDP or
  ICMP (Multipath TCP's is no TCP socket to Landlock; SMC's connects from the kernel) or of another family than
  theirs, Unix's and netlink's (VSOCK's reaches a VM's host, whose agents run what they are sent), io_uring (its
  operations make sockets and send without the system calls a filter sees), and the other architecture's system
  calls (i386's
  `socketcall` hides its arguments). Each reached a server on a closed port (red team). And a TCP socket's upper
  layer (TCP_ULP): where an smc module still offers one, it makes the socket SMC's, which connects from the kernel.

- `clone3`, which answers "not implemented" (glibc then uses `clone`): with CLONE_INTO_CGROUP it starts a process
  in any cgroup v2 group whose `cgroup.procs` the turn's user may write, the read-only /sys/fs/cgroup
  notwithstanding. A turn of a loop run as root (root, to the kernel's permission checks) started one in the
  hierarchy's root, out of its own group (agents/turn_cgroups.py), and from there could mount the whole hierarchy
  and freeze or cap any group of it, a run's too (red team).

- `pivot_root` (EPERM). Every folder that holds the workspace, or a place hidden or read-only to the agent, is a
  mount point in its namespace (agents/namespace.py), which the kernel will not rename; but it asks only whether the
  folder is one in the caller's own mount namespace. Every mount the agent was given is locked, its namespace's root
  too, and so is every copy of them in a namespace it makes: none can be unmounted or moved. pivot_root is what
  unlocks the old root (the kernel moves the lock onto the new one): in a user and mount namespace of its own (or in
  its own, as root) a turn pivoted into a tmpfs and detached the old root, pins and all, then renamed the workspace
  aside through a descriptor of the folder that holds it, and left a copy of its own at its path, whose ledger the
  next start trusted (red team). Sandboxes made with bubblewrap (Codex's) pivot too, and so cannot be made: Codex
  then runs its commands without its own (agents/coding_agent.py says so at the preflight). `unshare` and `mount`
  stay allowed.

- The kernel's keyrings (`add_key`, `request_key`, `keyctl`: "not implemented"), which belong to no namespace: a
  turn added 20,000 keys to the loop's session keyring, which outlived it, near root's whole quota (red team), and
  the user keyring of a loop run as root is the machine's root's.

- The scheduling of its PID namespace's init, pid 1 there (autoresearch/anchor.py), which is the turn's user's:
  `sched_setscheduler`, `sched_setparam`, `sched_setattr`, `sched_setaffinity` and `setpriority` on it, and
  `setpriority` on a process group (the init is in the turn's first one) or on every process of the user. A turn set
  the init SCHED_IDLE on the CPU of busy loops of its own: the init, whose exit ends the namespace, ran it late, and
  the turn ran on past its end, or its loop's kill, for about a second per busy loop (red team). The loop also kills
  every process of the namespace itself (orphans.kill_namespace).

- The CPUs it runs on, where the loop set some aside for agents (evaluator/cores.py, AGENT_CPUS_ENV): a turn that
  kept every core busy would slow the runs it overlaps, the baseline's seeds among them. The filter then refuses
  `sched_setaffinity` too (as it refuses io_uring, whose polling thread runs on the CPU its ring names).

- Its tasks, under a loop not run as root: at most AUTORESEARCH_TASKS (evaluator/tasks.py), by RLIMIT_NPROC in the
  turn's user namespace, as a run's are: an agent that forked without end would fill the process table. (A loop run
  as root caps them by a pids cgroup instead: agents/turn_cgroups.py.)

Sockets with a file (a tmux server's) are hidden by agents/namespace.py (agents/server_sockets.py finds them). UDP
is not restricted. This file runs with `python -I -S` (nothing from the environment, no site), so it imports nothing
but the standard library. Where the kernel has no Landlock (`abi()` is 0), or one older than ABI 4, the command runs
without it, as the README says (pinned still, where it is to be).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import resource
import struct
import sys
from collections.abc import Mapping
from urllib.parse import urlsplit

PORTS_ENV = "AUTORESEARCH_AGENT_PORTS"  # more ports an agent may connect to, comma-separated: "8000,11434"
ALWAYS = (53, 80, 443)  # DNS over TCP, HTTP, HTTPS
# Variables that name an endpoint an agent talks to (their URL's port is allowed): OPENAI_BASE_URL, ANTHROPIC_BASE_URL,
# OPENAI_API_BASE (aider's), AZURE_OPENAI_ENDPOINT, HTTP(S)_PROXY and ALL_PROXY. Not any *_URL or *_HOST: DATABASE_URL
# and DOCKER_HOST name servers that run what they are sent.
ENDPOINT_SUFFIXES = ("_BASE_URL", "_API_BASE", "_ENDPOINT", "_PROXY")
DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}

NET_ABI, SCOPE_ABI = 4, 6  # the Landlock ABI versions that restrict TCP connections, and abstract sockets and signals
_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446  # the same system call numbers on every architecture
_VERSION = 1  # LANDLOCK_CREATE_RULESET_VERSION
_CONNECT_TCP = 1 << 1  # LANDLOCK_ACCESS_NET_CONNECT_TCP
_RULE_NET_PORT = 2  # LANDLOCK_RULE_NET_PORT
_SCOPES = (1 << 0) | (1 << 1)  # LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL
_NO_NEW_PRIVS = 38  # PR_SET_NO_NEW_PRIVS: restrict_self needs it (or CAP_SYS_ADMIN)

# The seccomp filter (`side_doors`): per architecture, its AUDIT_ARCH value and the numbers of socket, sendto,
# sendmsg, sendmmsg, setsockopt and sched_setaffinity; io_uring_setup is 425 on both, clone3 435. x86_64's x32 calls
# (bit 30 set) are refused too.
_ARCHES = {
    "x86_64": (0xC000003E, 41, 44, 46, 307, 54, 203),
    "aarch64": (0xC00000B7, 198, 206, 211, 269, 208, 122),
}
_KEYRINGS = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}  # add_key, request_key, keyctl
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
# sched_setparam, sched_setscheduler, sched_setattr (and sched_setaffinity, above), refused on pid 1, the anchor; and
# setpriority: refused on pid 1, a process group (the anchor is in the turn's first one) and every process of the user
_SCHEDULING = {"x86_64": ((142, 144, 314), 141), "aarch64": ((118, 119, 274), 140)}
_PRIO_PROCESS, _ANCHOR = 0, 1
_IO_URING_SETUP, _CLONE3, _X32 = 425, 435, 0x40000000
_MSG_FASTOPEN = 0x20000000
_IPPROTO_TCP, _TCP_ULP = 6, 31  # setsockopt(TCP_ULP, "smc") made a TCP socket SMC's (kernels before ~6.10)
_AF_INET, _AF_INET6 = 2, 10
# The other families a socket may be of: Unix sockets, netlink (getaddrinfo and getifaddrs ask it for the addresses).
# Not the rest: SMC's connects from the kernel; VSOCK reaches the host of a VM, whose agents run what they are sent.
_FAMILIES = (1, 16)  # AF_UNIX, AF_NETLINK
_PROTOCOLS = (0, 1, 6, 17, 58, 136)  # the default, ICMP, TCP, UDP, ICMPv6, UDP-Lite
_EPERM, _EAFNOSUPPORT, _EPROTONOSUPPORT, _ENOSYS = 1, 97, 93, 38
_SET_SECCOMP, _MODE_FILTER = 22, 2  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO
_LD, _JEQ, _JSET, _JGE, _RET = 0x20, 0x15, 0x45, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, JSET, JGE, BPF_RET|K


class FenceError(OSError):
    """The kernel refused a step of the restriction."""


@functools.cache
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _call(number: int, *args: object) -> int:
    result = _libc().syscall(ctypes.c_long(number), *args)
    if result < 0:
        raise _failed()
    return result


def _prctl(option: int, *args: object) -> None:
    if _libc().prctl(option, *args, *(0,) * (4 - len(args))) != 0:
        raise _failed()


def _failed() -> FenceError:
    code = ctypes.get_errno()
    return FenceError(code, os.strerror(code))


@functools.cache
def abi() -> int:
    """The kernel's Landlock ABI version: 0 where it has none (or it is turned off, or this is not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        return _call(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_VERSION))
    except (OSError, AttributeError):
        return 0


def unavailable_reason() -> str | None:
    """None where agents' TCP connections can be restricted here; else one line saying why not."""
    version = abi()
    if version >= NET_ABI:
        return None
    if not sys.platform.startswith("linux"):
        return "Landlock is Linux's"
    if version == 0:
        return "this kernel has no Landlock (Linux 6.7 or later, with landlock in its lsm= list)"
    return f"this kernel's Landlock (ABI {version}) cannot restrict TCP connections (Linux 6.7 or later can)"


def allowed_ports(env: Mapping[str, str]) -> list[int]:
    """The TCP ports an agent with environment `env` may connect to: ALWAYS, the ports of the endpoints and proxies
    its variables name (ENDPOINT_SUFFIXES), and those listed in AUTORESEARCH_AGENT_PORTS. ValueError for a port there
    that is not one."""
    ports = set(ALWAYS)
    for name, value in env.items():
        if name.upper().endswith(ENDPOINT_SUFFIXES) and "://" in value:
            with contextlib.suppress(ValueError):  # not a URL after all
                url = urlsplit(value.strip())
                port = url.port or DEFAULT_PORTS.get(url.scheme.lower())
                if port:
                    ports.add(port)
    for word in env.get(PORTS_ENV, "").replace(",", " ").split():
        if not word.isdigit() or not 0 < int(word) < 65536:
            raise ValueError(f"{PORTS_ENV} lists {word!r}, which is not a TCP port (1-65535)")
        ports.add(int(word))
    return sorted(ports)


def launcher(env: Mapping[str, str]) -> list[str]:
    """The words that start a command behind the fence (before the command's own), for an agent with environment
    `env`: its TCP connections restricted where the kernel can, its processes pinned to the CPUs AGENT_CPUS_ENV
    names, if it names some, their tasks capped by RLIMIT_NPROC where that caps a loop's (evaluator/tasks.py), and
    the filter of `side_doors`; none where none of it is to be done (not Linux)."""
    from autoresearch.evaluator import tasks  # not at the top: this file also runs alone (`main`)
    from autoresearch.evaluator.cores import AGENT_CPUS_ENV

    if not sys.platform.startswith("linux"):
        return []
    ports = ",".join(map(str, allowed_ports(env))) if unavailable_reason() is None else ""
    cpus = env.get(AGENT_CPUS_ENV, "")
    cap = str(tasks.run_tasks() or "") if tasks.by_limit() else ""
    return [sys.executable, "-I", "-S", os.path.abspath(__file__), ports or "-", cpus or "-", cap or "-", "--"]


def fails_here(env: Mapping[str, str]) -> str | None:
    """None where a turn's fence can be set up on this machine; else what it said. Run once before a loop starts: a
    kernel without seccomp filtering (WSL1's, one built without CONFIG_SECCOMP_FILTER) fails every turn's, and the
    first turn would find that only after the baseline had trained."""
    import subprocess  # not at the top: this file also runs alone (`main`), where it needs none

    words = launcher(env)
    if not words:
        return None
    try:
        done = subprocess.run(
            [*words, sys.executable, "-I", "-S", "-c", ""], capture_output=True, text=True, timeout=60, env=dict(env)
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return str(err)
    return None if done.returncode == 0 else (done.stderr.strip() or f"exit status {done.returncode}")[-500:]


def restrict(ports: list[int] | None, cpus: list[int] | None = None, tasks: int = 0) -> None:
    """Restrict this process, and all it starts from now on, for good: TCP connections to `ports` only, and where the
    kernel can, abstract sockets and signals to what it starts (None: connections unrestricted); pinned to `cpus`,
    if given; at most `tasks` tasks, where this process is in a user namespace of its own (in the machine's the kernel
    would count every process of the user); and the filter of `side_doors`."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    if tasks and _own_user_namespace():
        resource.setrlimit(resource.RLIMIT_NPROC, (tasks, tasks))
    _prctl(_NO_NEW_PRIVS, 1)  # what Landlock's restrict_self and an unprivileged filter need
    if ports is not None:
        _landlock(ports)
    side_doors(pinned=bool(cpus))


def _own_user_namespace() -> bool:
    # harness/boot.py `cap_tasks` asks the same for a run: this file imports nothing of ours (python -I -S).
    with open("/proc/self/uid_map") as mapping:
        return mapping.read().split() != ["0", "0", "4294967295"]


def _landlock(ports: list[int]) -> None:
    version = abi()
    if version < NET_ABI:
        raise FenceError(0, unavailable_reason())
    scoped = _SCOPES if version >= SCOPE_ABI else 0
    # struct landlock_ruleset_attr: handled_access_fs (none: namespace.py does the files), handled_access_net, scoped
    attr = struct.pack("=QQQ", 0, _CONNECT_TCP, scoped) if scoped else struct.pack("=QQ", 0, _CONNECT_TCP)
    ruleset = _call(_CREATE_RULESET, attr, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    try:
        for port in ports:
            rule = struct.pack("=QQ", _CONNECT_TCP, port)  # struct landlock_net_port_attr
            _call(_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(_RULE_NET_PORT), rule, ctypes.c_uint32(0))
        _call(_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)


def _filter(arch: int, socket: int, sendto: int, sendmsg: int, sendmmsg: int, setsockopt: int, setaffinity: int,
            pinned: bool, keyrings: tuple[int, ...], scheduling: tuple[tuple[int, ...], int],
            pivot_root: int) -> bytes:  # fmt: skip
    """The seccomp program of `side_doors` (classic BPF over struct seccomp_data: nr at 0, arch at 4, the low half of
    argument i at 16 + 8i), assembled with labels: a jump names the label (always further on) it goes to when
    its test holds, else the next instruction runs. `pinned`: sched_setaffinity refused too, not only on pid 1."""
    on_pid, setpriority = scheduling
    arg = lambda i: (_LD, 16 + 8 * i)
    refuse = lambda code: [(_RET, _ERRNO | code)]
    program = {
        "start": [(_LD, 4), (_JEQ, arch, "native"), *refuse(_ENOSYS)],
        "native": [
            (_LD, 0),
            (_JGE, _X32, "nosys"),
            (_JEQ, socket, "socket"),
            (_JEQ, setsockopt, "option"),
            (_JEQ, _IO_URING_SETUP, "nosys"),
            (_JEQ, _CLONE3, "nosys"),
            (_JEQ, pivot_root, "eperm"),
            *((_JEQ, number, "nosys") for number in keyrings),
            (_JEQ, setaffinity, "eperm" if pinned else "pid"),
            *((_JEQ, number, "pid") for number in on_pid),
            (_JEQ, setpriority, "which"),
        ],
        "sends": [(_JEQ, sendto, "flags3"), (_JEQ, sendmmsg, "flags3"), (_JEQ, sendmsg, "flags2"), (_RET, _ALLOW)],
        "flags3": [arg(3), (_JSET, _MSG_FASTOPEN, "eperm"), (_RET, _ALLOW)],
        "flags2": [arg(2), (_JSET, _MSG_FASTOPEN, "eperm"), (_RET, _ALLOW)],
        "option": [arg(1), (_JEQ, _IPPROTO_TCP, "optname"), (_RET, _ALLOW)],
        "optname": [arg(2), (_JEQ, _TCP_ULP, "eperm"), (_RET, _ALLOW)],
        "socket": [
            arg(0),
            (_JEQ, _AF_INET, "protocol"),
            (_JEQ, _AF_INET6, "protocol"),
            *((_JEQ, family, "allow") for family in _FAMILIES),
            *refuse(_EAFNOSUPPORT),
        ],
        "protocol": [arg(2), *((_JEQ, p, "allow") for p in _PROTOCOLS), *refuse(_EPROTONOSUPPORT)],
        "pid": [arg(0), (_JEQ, _ANCHOR, "eperm"), (_RET, _ALLOW)],
        "which": [arg(0), (_JEQ, _PRIO_PROCESS, "who"), *refuse(_EPERM)],
        "who": [arg(1), (_JEQ, _ANCHOR, "eperm"), (_RET, _ALLOW)],
        "allow": [(_RET, _ALLOW)],
        "eperm": refuse(_EPERM),
        "nosys": refuse(_ENOSYS),
    }
    flat = [(label if i == 0 else None, op) for label, ops in program.items() for i, op in enumerate(ops)]
    where = {label: n for n, (label, _) in enumerate(flat) if label}
    code = b""
    for n, (_, (op, k, *to)) in enumerate(flat):
        jump = where[to[0]] - n - 1 if to else 0
        code += struct.pack("=HBBI", op, jump, 0, k)
    return code


def refuses_pivot_root() -> bool:
    """Whether `side_doors` refuses pivot_root here (an architecture the filter knows): a sandbox made with bubblewrap
    (Codex's) cannot be made in a turn."""
    return platform.machine() in _PIVOT_ROOT


def side_doors(pinned: bool = False) -> None:
    """Refuse, for good, the ways to a TCP connection that Landlock's rule does not see, `clone3`, `pivot_root`, the
    keyrings, and with `pinned`, `sched_setaffinity` (a seccomp filter: see the module's docstring); nothing where
    this architecture is not one the filter knows. Needs no_new_privs, which `restrict` sets."""
    numbers = _ARCHES.get(platform.machine())
    if numbers is None:
        return
    machine = platform.machine()
    program = _filter(*numbers, pinned, _KEYRINGS[machine], _SCHEDULING[machine], _PIVOT_ROOT[machine])
    program = ctypes.create_string_buffer(program)
    prog = struct.pack("=HxxxxxxQ", len(program.raw) // 8, ctypes.addressof(program))  # struct sock_fprog
    _prctl(_SET_SECCOMP, _MODE_FILTER, ctypes.c_char_p(prog))


def main(argv: list[str]) -> int:
    """`fence.py PORTS CPUS TASKS -- COMMAND...` (PORTS and CPUS comma-separated lists, TASKS a number, each - for
    none): restrict, then become the command (126 or 127 where it cannot be run)."""
    if len(argv) < 5 or argv[3] != "--":
        print("usage: fence.py PORT,PORT,...|- CPU,CPU,...|- TASKS|- -- COMMAND [ARG...]", file=sys.stderr)
        return 2
    try:
        ports, cpus = ([int(n) for n in word.split(",") if n] if word != "-" else None for word in argv[:2])
        restrict(ports, cpus, int(argv[2]) if argv[2] != "-" else 0)
    except (OSError, ValueError) as err:
        print(f"autoresearch: could not fence the agent's turn: {err}", file=sys.stderr)
        return 126
    try:
        os.execvp(argv[4], argv[4:])
    except OSError as err:
        print(f"autoresearch: could not run {argv[4]}: {err.strerror}", file=sys.stderr)
        return 127 if isinstance(err, FileNotFoundError) else 126


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
