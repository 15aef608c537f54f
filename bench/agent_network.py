"""Whether a shell agent's turn on this machine has a network of its own (agents/egress.py), and what it reaches:
the endpoint its environment names (a server of this script's on 127.0.0.1) and not another host (one on
127.0.0.2, standing for the internet). Prints one line per fact; exits 1 where a turn reached what it may not.

    python bench/agent_network.py
"""

from __future__ import annotations

import http.server
import os
import shlex
import sys
import tempfile
import threading
from pathlib import Path

from autoresearch.agents import namespace
from autoresearch.agents.command_agent import run_process

TURN = """
import urllib.request
for url in {urls!r}:
    try:
        print(url, "reached:", urllib.request.urlopen(url, timeout=10).read().decode())
    except Exception as err:
        print(url, "refused:", err)
"""


def server(host: str) -> http.server.ThreadingHTTPServer:
    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(host.encode())

        def log_message(self, *_: object) -> None:
            pass

    s = http.server.ThreadingHTTPServer((host, 0), Answer)
    threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True).start()
    return s


def main() -> int:
    print("a network of its own:", namespace.isolates_network())
    endpoint, other = server("127.0.0.1"), server("127.0.0.2")
    urls = [f"http://127.0.0.1:{endpoint.server_address[1]}/v1", f"http://127.0.0.2:{other.server_address[1]}/val"]
    env = {**os.environ, "OPENAI_BASE_URL": urls[0]}
    with tempfile.TemporaryDirectory() as workspace:
        command = f"{shlex.quote(sys.executable)} -c {shlex.quote(TURN.format(urls=urls))}"
        code, out, err = run_process(command, Path(workspace), "", env, 60, "turn")
    print(out.strip())
    print("exit status:", code, "| said:", err.strip().splitlines()[-1] if err.strip() else "")
    return 0 if code == 0 and "reached: 127.0.0.1" in out and "reached: 127.0.0.2" not in out else 1


if __name__ == "__main__":
    sys.exit(main())
