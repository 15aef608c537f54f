"""The init of a PID namespace of ours (a run's sandbox, an agent's turn), which what runs inside cannot take over.

It reaps what is orphaned there, as an init must (in a run's sandbox their CPU time then shows on the run's clock),
and does nothing else. It is not dumpable: a process inside, in a user namespace below the anchor's, or without a
capability, can neither trace it nor write its memory (/proc/1/mem), and so can neither have it work beyond the run's
clock and cap (red team: bubblewrap's init, and a `sleep` before this, rewritten to fork 300 times under a cap of 48)
nor drop the parent-death signal that ends the namespace with the loop (red team: a turn's shell, pid 1 then, made to,
outlived its loop killed outright). As init, with no handler, it takes no signal from inside. Given a command, it
starts that as its one child, with the signals Python ignores restored, and ends as it ends (128 + the signal that
killed it, as bubblewrap's init), the namespace with it; given none, it says "ready" (an evaluator's box, which the
experiment joins later: evaluator/confined.py).
"""

from __future__ import annotations

import sys

NAME = "ar-anchor"
SOURCE = f"""
import ctypes, os, signal, sys
libc = ctypes.CDLL(None)
libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE: off
libc.prctl(15, b"{NAME}", 0, 0, 0)  # PR_SET_NAME
signal.signal(signal.SIGINT, signal.SIG_DFL)  # Python's handler: the one signal from inside an init would take
signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGCHLD}})
child = None
if sys.argv[1:]:
    child = os.fork()
    if child == 0:
        for ignored in (signal.SIGPIPE, signal.SIGXFSZ):  # ignored by Python, kept so by exec: a shell's pipes need it
            signal.signal(ignored, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {{signal.SIGCHLD}})
        os.execv(sys.argv[1], sys.argv[1:])
    os.closerange(3, 1 << 20)  # the child's descriptors are the child's alone
else:
    print("ready", flush=True)
while True:
    signal.sigwaitinfo({{signal.SIGCHLD}})
    try:
        while (ended := os.waitpid(-1, os.WNOHANG))[0]:
            if ended[0] == child:
                code = os.waitstatus_to_exitcode(ended[1])
                os._exit(128 - code if code < 0 else code)
    except ChildProcessError:
        pass
"""


def command(argv: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The words that start the anchor, with `argv` (an absolute path first) as its one child, if given."""
    return [sys.executable, "-I", "-S", "-c", SOURCE, *argv]
