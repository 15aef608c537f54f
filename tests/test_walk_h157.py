"""`autoresearch web` walked as a researcher would: a real loop on the tiny preset (CPU), the page open in Chromium
beside `status` and `show`, through the baseline, a run, Ctrl-C, two workers, a night of 2,000 experiments, a phone.
What the page did wrong, each tested here in a real browser (Playwright) over a real server:

1. A click on an experiment showed it BELOW the whole table: in a night of 2,000 (52,000 px of rows) its detail
   landed some 40,000 px under the row clicked, out of sight; nothing seemed to happen. On a wide window it is now
   shown beside the table, in view however far the table scrolls, the clicked row kept where it was on the screen;
   on a narrow one (a phone) it is brought into view. And the chart, arriving a second after the rows (matplotlib
   draws it), pushed every row 500 px down under the reader's pointer: its room is now kept while it loads.
2. While a run trains, the status line changes every second, and the page built the whole table again each time
   (2,000 rows a second in the big night) and asked for the chosen experiment again, redrawing its text: a click
   whose press and release straddled a rebuild was lost, and text selected in the table or in the detail (a diff
   line to copy) vanished within a second. Now the table is built again only when a row changes, and the detail is
   redrawn only when its text does.
3. While the baseline trained (and after Ctrl-C of it), the page showed the report's empty chart, a frame the size of
   the screen saying "Nothing to plot yet: run `autoresearch run` first", beside a badge saying a loop runs. The
   chart now appears once an experiment has a verdict.
4. On a phone (390 px) the table made the page 545 px wide: the whole page scrolled sideways, its header ending
   mid-screen. On a narrow window each experiment is now two lines, its numbers and then what it tried.
5. Every page load logged a failed request in the browser's console (no /favicon.ico: 404). The page names its icon.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loop_support import make_workspace
from test_report import NO_AGENT, exp
from web_support import chromium, served

from autoresearch.loop.ledger import Ledger
from autoresearch.vocabulary import Status
from autoresearch.workspace.workspace import Workspace


def night_of(root: Path, data_dir: Path, finished: int, running: bool = False) -> Workspace:
    """A workspace whose ledger holds `finished` experiments (the baseline, then discards and a keep each tenth),
    and, `running`, one more in flight that started now."""
    ws = make_workspace(root, data_dir)
    ledger = Ledger(ws.root)
    if finished:
        ledger.insert(exp(1, Status.KEEP, 1.0, "baseline", kind="baseline", reason="the reference", **NO_AGENT))
    best = 1.0
    for i in range(2, finished + 1):
        if i % 10 == 0:
            best -= 0.01
            ledger.insert(exp(i, Status.KEEP, best, f"change {i}: warm up the learning rate", reason="better"))
        else:
            tuned = f"tune: VE_GATE_CHANNELS 32 -> 8, UNEMBEDDING_LR 0.004 -> {i}"
            said = f"change {i}: a wider MLP" if i % 7 else tuned
            ledger.insert(exp(i, Status.DISCARD, best + 0.004, said, reason="worse"))
    if running:
        kind = {"kind": "baseline", **NO_AGENT} if not finished else {}
        description = "tune: LR 0.04 -> 0.05" if finished else "baseline"
        now = {"started_at": time.time(), "finished_at": None, "training_seconds": None, "total_seconds": None}
        ledger.insert(exp(finished + 1, Status.RUNNING, None, description, **kind, **now))
    ledger.close()
    return ws


@pytest.fixture
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


def in_view(page, selector: str) -> bool:
    box = page.locator(selector).bounding_box()
    height = page.viewport_size["height"]
    return box is not None and box["y"] < height and box["y"] + min(box["height"], 40) > 0


@pytest.mark.slow  # a browser: seconds
@pytest.mark.parametrize("width", [1280, 390], ids=["wide", "phone"])
def test_a_clicked_experiment_is_shown_where_it_is_seen_in_a_long_night(
    tmp_path, tiny_prepared, cache_dir, monkeypatch, browser, width
) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache_dir))
    ws = night_of(tmp_path / "ws", tiny_prepared, 200)
    from playwright.sync_api import expect

    with served(ws) as url:
        page = browser.new_page(viewport={"width": width, "height": 800})
        page.goto(url)
        rows = page.locator("#experiments tbody tr")
        expect(rows).to_have_count(200)
        assert page.evaluate("document.documentElement.scrollWidth") <= width, "the page is wider than the window"
        row = page.locator("#experiments tbody tr[data-id='153']")
        row.scroll_into_view_if_needed()
        row.click()
        expect(page.locator("#detail-title")).to_have_text("Experiment 153")
        expect(page.locator("#detail-text")).to_contain_text("exp 153 DISCARD")
        page.wait_for_timeout(300)
        assert in_view(page, "#detail-text"), "the detail was drawn out of sight"
        if width > 1000:  # beside the table: the row clicked stays in view, and the detail as the table scrolls
            assert in_view(page, "#experiments tbody tr[data-id='153']")
            page.mouse.wheel(0, 3000)
            page.wait_for_timeout(300)
            assert in_view(page, "#detail-text")


@pytest.mark.slow  # a browser: seconds
def test_while_a_run_trains_the_table_and_the_detail_are_not_drawn_again_each_second(
    tmp_path, tiny_prepared, cache_dir, monkeypatch, browser
) -> None:
    """The status line ("running: exp 31 for 12s") changes each second; the rows and exp 30 do not."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache_dir))
    ws = night_of(tmp_path / "ws", tiny_prepared, 30, running=True)
    from playwright.sync_api import expect

    with ws.lock(), served(ws) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        expect(page.locator("#connection")).to_have_text("running")
        page.locator("#experiments tbody tr[data-id='30']").click()
        expect(page.locator("#detail-text")).to_contain_text("exp 30 KEEP")
        row = page.locator("#experiments tbody tr[data-id='30']").element_handle()
        line = page.locator("#detail-text span").first.element_handle()
        said = page.locator("#status").text_content()
        expect(page.locator("#status")).not_to_have_text(said, timeout=5000)  # the clock moved on
        page.wait_for_timeout(1500)
        assert row.evaluate("r => r.isConnected"), "the table was built again though no row changed"
        assert line.evaluate("l => l.isConnected"), "the detail was drawn again though its text did not change"


@pytest.mark.slow  # a browser: seconds
@pytest.mark.parametrize("loop", ["running", "stopped"])
def test_while_the_baseline_trains_or_after_ctrl_c_of_it_no_empty_chart_is_shown(
    tmp_path, tiny_prepared, cache_dir, monkeypatch, browser, loop
) -> None:
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache_dir))
    ws = night_of(tmp_path / "ws", tiny_prepared, 0, running=True)
    from playwright.sync_api import expect

    with served(ws) as url:
        lock = ws.lock() if loop == "running" else None
        if lock is not None:
            lock.__enter__()
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(url)
            expect(page.locator("#connection")).to_have_text(loop)
            word = "running" if loop == "running" else "interrupted"
            expect(page.locator("#experiments tbody tr")).to_have_text([f"1{word}baseline"], use_inner_text=False)
            page.wait_for_timeout(1500)
            assert page.locator("#chart").is_hidden(), "an empty chart shown while nothing has finished"
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)


@pytest.mark.slow  # a browser: seconds
def test_a_page_load_asks_for_nothing_that_is_not_there(tmp_path, tiny_prepared, cache_dir, monkeypatch, browser):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache_dir))
    ws = night_of(tmp_path / "ws", tiny_prepared, 3)
    from playwright.sync_api import expect

    with served(ws) as url:
        page = browser.new_page()
        failed: list[str] = []
        page.on("response", lambda answer: failed.append(answer.url) if answer.status >= 400 else None)
        page.on("console", lambda message: failed.append(message.text) if message.type == "error" else None)
        page.goto(url)
        expect(page.locator("#experiments tbody tr")).to_have_count(3)
        page.wait_for_timeout(1000)
        assert failed == []
