"""`autoresearch web`: the night in a browser. What the page is given equals what `status` and `show` print; the
page, in a real browser (Chromium, driven by Playwright), follows a night live and shows an agent's text as text;
requests naming another host (DNS rebinding) are refused; the command's errors and Ctrl-C say what they are."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import time

import httpx
import pytest
from loop_support import FakeExecutor, ScriptedAgent, make_loop
from starlette.testclient import TestClient
from web_support import PLANTED, chromium, edit, score, served, web_command

from autoresearch.cli import main
from autoresearch.loop.ledger import verified_rows
from autoresearch.loop.status import status_text
from autoresearch.report.compare import show_text
from autoresearch.visible import visible
from autoresearch.web import serve as web_serve
from autoresearch.web.app import create_app
from autoresearch.web.night import Night
from autoresearch.workspace.workspace import Workspace


def client(ws: Workspace, hosts: list[str] | None = None) -> TestClient:
    app = create_app(Night(ws), hosts or web_serve.answered_hosts("127.0.0.1"))
    return TestClient(app, base_url="http://127.0.0.1:8765")


def test_the_page_is_given_what_status_says_and_every_experiment_newest_first(night) -> None:
    answer = client(night).get("/api/night")
    assert answer.status_code == 200
    data = answer.json()
    assert data["status"] == visible(status_text(night)) and data["running"] is False
    assert data["title"].startswith("val_bpb 1.0225 → 1.0000")
    rows = data["experiments"]
    assert [(r["id"], r["status"], r["best"]) for r in rows] == [
        (4, "crash", False),
        (3, "discard", False),
        (2, "keep", True),
        (1, "keep", False),
    ]
    assert rows[1]["description"] == PLANTED and rows[1]["delta"] == pytest.approx(0.49 - 0.0)
    assert rows[2]["val_bpb"] == pytest.approx(1.0) and rows[2]["delta"] == pytest.approx(1.0 - 1.0225)
    assert rows[3]["delta"] is None and rows[0]["val_bpb"] is None


def test_one_experiment_is_what_show_prints_and_a_missing_one_says_which_there_are(night) -> None:
    web = client(night)
    answer = web.get("/api/experiments/2")
    assert answer.status_code == 200
    assert answer.json()["text"] == show_text(night.git, verified_rows(night.root), 2, stopped=True)
    assert "+LR = 0.2" in answer.json()["text"]
    missing = web.get("/api/experiments/99")
    assert missing.status_code == 404 and missing.json() == {
        "error": "no experiment 99 in this workspace (experiments 1-4)"
    }
    assert web.get("/api/experiments/..%2f..%2fetc").status_code == 404


@pytest.mark.slow  # matplotlib draws it twice: seconds
def test_the_chart_is_the_reports_as_svg_and_drawn_again_only_when_it_changes(night, tiny_prepared) -> None:
    viewed = Night(night)
    first = viewed.chart()
    assert first.lstrip().startswith(b"<?xml") and b"<svg" in first
    assert viewed.chart() is first  # nothing new: not drawn again
    loop = make_loop(night, FakeExecutor(score))
    loop.step(ScriptedAgent([edit("LR 0.25", LR=0.25)]))
    loop.ledger.close()
    viewed._made = float("-inf")  # past FRESH_S
    assert viewed.chart() != first
    answer = client(night).get("/progress.svg")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/svg+xml"


def test_a_request_naming_another_host_is_refused(night) -> None:
    """DNS rebinding: a site whose name is made to point at 127.0.0.1 would read the night through the person's
    browser; its requests name that site."""
    web = client(night)
    assert web.get("/api/night", headers={"host": "attacker.example:8765"}).status_code == 400
    assert web.get("/", headers={"host": "attacker.example"}).status_code == 400
    for host in ("localhost:8765", "127.0.0.1:8765", "[::1]:8765"):
        assert web.get("/api/night", headers={"host": host}).status_code == 200, host
    anywhere = client(night, web_serve.answered_hosts("0.0.0.0"))
    assert anywhere.get("/api/night", headers={"host": "gpu-box.lan:8765"}).status_code == 200
    assert web_serve.answered_hosts("10.0.0.5") == [*web_serve.LOOPBACK_NAMES, "10.0.0.5"]
    assert web_serve.answered_hosts("::1") == web_serve.LOOPBACK_NAMES


def test_every_answer_lets_only_the_pages_own_script_run_and_no_site_frame_it(night) -> None:
    web = client(night)
    for path in ("/", "/static/app.js", "/api/night", "/api/experiments/3", "/api/experiments/99"):
        answer = web.get(path)
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy, path
        assert answer.headers["x-content-type-options"] == "nosniff", path


def test_a_ledger_another_hand_wrote_is_said_on_the_page_not_shown_as_the_night(night) -> None:
    with sqlite3.connect(night.state / "ledger.sqlite") as db:
        db.execute("UPDATE experiments SET status = 'keep', val_bpb = 0.5 WHERE id = 3")
    data = client(night).get("/api/night").json()
    assert "experiments" not in data and "ledger" in data["error"]
    assert client(night).get("/api/experiments/3").status_code == 404


@pytest.mark.slow  # a browser: a few seconds
def test_in_a_browser_the_page_follows_the_night_live_and_shows_an_agents_text_as_text(night) -> None:
    from playwright.sync_api import expect, sync_playwright

    with served(night) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            rows = page.locator("#experiments tbody tr")
            expect(rows).to_have_count(4)
            expect(page.locator("#connection")).to_have_text("stopped")
            expect(page.locator("#status")).to_contain_text("best: exp 2 val_bpb 1.000000")
            expect(rows.nth(1).locator("td").nth(5)).to_have_text(PLANTED)
            assert page.locator("#experiments img, #experiments script").count() == 0
            expect(page.locator("#chart")).to_be_visible()
            expect(page.locator("#chart")).to_have_js_property("complete", True)
            assert page.locator("#chart").evaluate("chart => chart.naturalWidth") > 0  # drawn, not a broken image

            rows.nth(2).click()  # exp 2
            expect(page.locator("#detail-title")).to_have_text("Experiment 2")
            expect(page.locator("#detail-text")).to_contain_text("+LR = 0.2")

            with night.lock():  # a loop runs, and finds a better LR: the page shows it with no reload
                expect(page.locator("#connection")).to_have_text("running", timeout=10_000)
                loop = make_loop(night, FakeExecutor(score))
                loop.step(ScriptedAgent([edit("LR 0.2 -> 0.21", LR=0.21)]))
                loop.ledger.close()
                expect(rows).to_have_count(5, timeout=10_000)
                expect(rows.first.locator("td").nth(5)).to_have_text("LR 0.2 -> 0.21")
            expect(page.locator("#connection")).to_have_text("stopped", timeout=10_000)
            assert page.title() == "autoresearch" and errors == []
        finally:
            browser.close()


@pytest.mark.slow  # a server: a second or two
def test_the_stream_sends_the_night_at_once_then_each_change(night) -> None:
    with served(night) as url, httpx.stream("GET", url + "events", timeout=10) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = answer.iter_lines()
        first = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
        assert [r["id"] for r in first["experiments"]] == [4, 3, 2, 1]
        with night.lock():
            second = json.loads(next(line for line in lines if line.startswith("data: "))[6:])
            # the rows as last sent: left out (a night of 2,000 sent 400 KB each second a run's clock ticked)
            assert second["running"] is True and "experiments" not in second and second["status"] != first["status"]
            loop = make_loop(night, FakeExecutor(score))
            loop.step(ScriptedAgent([edit("LR 0.25", LR=0.25)]))
            loop.ledger.close()
            third = json.loads(next(line for line in lines if line.startswith("data: ") and "experiments" in line)[6:])
        assert [r["id"] for r in third["experiments"]] == [5, 4, 3, 2, 1]


def test_an_unchanged_ledger_is_not_read_again_for_each_snapshot(night, monkeypatch) -> None:
    """A night of 2,000 experiments took 0.5 s a read, twice a second while a run's clock ticked (walk, helper 157)."""
    from autoresearch.web import night as night_module

    reads = []
    monkeypatch.setattr(night_module, "verified_rows", lambda root: reads.append(root) or verified_rows(root))
    viewed = Night(night)
    for _ in range(3):
        viewed._made = float("-inf")  # past FRESH_S
        assert [r["id"] for r in viewed.snapshot()["experiments"]] == [4, 3, 2, 1]
    assert len(reads) == 1
    loop = make_loop(night, FakeExecutor(score))
    loop.step(ScriptedAgent([edit("LR 0.25", LR=0.25)]))
    loop.ledger.close()
    viewed._made = float("-inf")
    assert viewed.snapshot()["experiments"][0]["id"] == 5 and len(reads) == 2


def test_a_taken_port_or_an_address_not_of_this_machine_is_an_error_that_says_what_to_do(night, capsys) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["web", "--port", str(port), "--workspace", str(night.root)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert f"port {port} on 127.0.0.1 is taken" in err and "--port 0" in err and "Traceback" not in err
        assert "cd " not in err  # no command of the workspace's named: no `cd` there first
    with pytest.raises(SystemExit) as refused:  # was taken as 34463, and said to be in use
        main(["web", "--port", "99999", "--workspace", str(night.root)])
    assert refused.value.code == 2 and "99999 is no port: give 1 to 65535" in capsys.readouterr().err
    assert main(["web", "--host", "203.0.113.7", "--workspace", str(night.root)]) == 2
    assert "it is no address of this machine" in " ".join(capsys.readouterr().err.split())
    assert main(["web", "--host", "no-such-host.invalid", "--workspace", str(night.root)]) == 2
    assert "no such address" in " ".join(capsys.readouterr().err.split())


@pytest.mark.slow  # a process: a second or two
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_command_says_where_to_look_and_stops_on_ctrl_c_without_a_traceback(night, signum) -> None:
    proc = web_command(night)
    try:
        said = proc.stdout.readline()
        assert said.startswith(f"the night in {night.root}, live: http://127.0.0.1:"), said + proc.stderr.read()
        url = said.split("live: ", 1)[1].split()[0]
        assert httpx.get(url + "api/night").json()["experiments"][0]["id"] == 4
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signum and "Traceback" not in err
    assert "stopped the web view" in err


def test_a_workspace_with_no_experiment_yet_says_how_to_start_one(workspace) -> None:
    data = client(workspace).get("/api/night").json()
    assert data["experiments"] == [] and data["title"] == "No experiments yet"
    assert "no experiments yet: start with `autoresearch run`" in data["status"]


@pytest.mark.slow  # a browser: seconds
def test_a_ledger_changed_by_another_hand_while_the_page_is_open_empties_the_page_and_says_so(night) -> None:
    """What was shown of the ledger before stayed under the error (red team): the night another hand wrote is not to
    be read as the night at all."""
    from playwright.sync_api import expect, sync_playwright

    with served(night) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url)
            rows = page.locator("#experiments tbody tr")
            expect(rows).to_have_count(4)
            rows.nth(2).click()
            expect(page.locator("#detail-text")).to_contain_text("+LR = 0.2")
            with sqlite3.connect(night.state / "ledger.sqlite") as db:
                db.execute("UPDATE experiments SET status = 'keep', val_bpb = 0.5 WHERE id = 3")
            expect(page.locator("#error")).to_contain_text("ledger", timeout=10_000)
            expect(rows).to_have_count(0)
            expect(page.locator("#status")).to_have_text("")
            assert page.locator("#chart").is_hidden() and page.locator("#detail").is_hidden()
        finally:
            browser.close()


@pytest.mark.slow  # a process: a few seconds
def test_started_as_a_background_job_it_ignores_ctrl_c_as_the_loop_does_and_stops_on_sigterm(night) -> None:
    """CI: under `nohup ... &` SIGINT came ignored; uvicorn stopped on it anyway, then exited 0 without a word."""
    proc = web_command(night, background=True)
    try:
        url = proc.stdout.readline().split("live: ", 1)[1].split()[0]
        assert httpx.get(url + "api/night").status_code == 200  # serving: uvicorn has taken the signals
        proc.send_signal(signal.SIGINT)
        time.sleep(1.5)
        assert proc.poll() is None and httpx.get(url + "api/night").status_code == 200
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM and "stopped the web view" in err and "Traceback" not in err
