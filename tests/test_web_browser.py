"""The operator's console in a real headless chromium, against `exoacq daemon --simulated`.

A real daemon, a real `exoacq web` process and Debian's chromium (driven by Playwright):
the acquire page starts an NTA run, the live page draws its frames with the detected
particles over them, the run's page shows the same mean and concentration as the
`nta.result` document published on the results socket, bad form input shows the
control socket's own message, and the sample's cross-method report opens. A screenshot
of each page goes to test-artifacts/web/ (at the repository's root).
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from exoacq.bus import ControlClient, loads, subscribe
from exoacq.demo import start_daemon, stop_daemon
from exoacq.errors import ExoacqError
from exoacq.web.bench import start_web, stop_web

from conftest import ROOT

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "test-artifacts" / "web"
TIMEOUT_MS = 30_000


@dataclass
class Console:
    """The daemon, the console's server and a browser context on it, for the module's tests."""
    base: str
    control: str
    results: Any  # SUB socket on the results endpoint, topic nta.result
    context: Any  # playwright BrowserContext
    errors: list[str] = field(default_factory=list)  # console errors and uncaught page errors
    expected_errors: list[str] = field(default_factory=list)  # the 400 replies the bad-input test provokes

    def page(self, path: str) -> Any:
        page = self.context.new_page()
        page.goto(self.base + path, timeout=TIMEOUT_MS)
        return page

    def screenshot(self, page: Any, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture(scope="module")
def console(tmp_path_factory, chromium_browser):
    tmp = tmp_path_factory.mktemp("web")
    daemon, control = start_daemon(tmp / "data", tmp / "daemon.log")
    web = None
    try:
        web, base = start_web(control, tmp / "web-data", tmp / "web.log")
        with ControlClient(control) as client:
            results = subscribe(client.request("status")["endpoints"]["results"], ["nta.result"])
        context = chromium_browser.new_context(viewport={"width": 1400, "height": 1000})
        state = Console(base, control, results, context)

        def on_console(message: Any) -> None:
            if message.type == "error":
                where = message.location.get("url", "") if message.location else ""
                page = message.page.url if message.page else "?"
                state.errors.append(f"{message.text} ({where}, on the page {page})")
        context.on("console", on_console)
        context.on("weberror", lambda error: state.errors.append(f"uncaught: {error.error}"))
        try:
            yield state
        finally:
            context.close()
            results.close(linger=0)
    finally:
        if web is not None:
            stop_web(web)
        assert stop_daemon(daemon) == 0
    for log in (tmp / "daemon.log", tmp / "web.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")


def set_field(page: Any, name: str, value: str) -> None:
    """Give the acquire form's field ``name`` a value (typed into an input, chosen in a select)."""
    field_ = page.locator(f"#acquire-form [name={name}]")
    if field_.evaluate("e => e.tagName") == "SELECT":
        field_.select_option(value)
    else:
        field_.fill(value)


def fill_acquire_form(page: Any, values: dict[str, str]) -> None:
    page.wait_for_selector("#acquire-form [name=method] option[value=nta]", state="attached", timeout=TIMEOUT_MS)
    set_field(page, "method", "nta")  # the instruments serving it are listed then
    page.wait_for_selector("#acquire-form [name=instrument] option[value=nta]", state="attached", timeout=TIMEOUT_MS)
    set_field(page, "instrument", "nta")
    for name, value in values.items():
        set_field(page, name, value)


def as_sent(value: str) -> Any:
    """A form string as the console sends it to the daemon: a number when it reads as one."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def number_in(text: str) -> float:
    """The number shown in an element's text ("123.4 nm", "1.23e+09 /mL")."""
    found = re.search(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", text.replace(",", ""))
    assert found, f"no number in {text!r}"
    return float(found.group())


def next_result(results: Any, run_id: str, timeout_s: float) -> dict:
    """The `nta.result` document of ``run_id`` as published on the results socket."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if results.poll(200):
            document = loads(results.recv_multipart()[1])
            if document.get("run_id") == run_id:
                return document
    raise AssertionError(f"no nta.result for {run_id} within {timeout_s:g} s")


BAD_INPUT = {
    "dilution 0": {"sample": "EV lot 7", "dilution": "0", "duration_s": "3", "captures": "1"},
    "sample empty": {"sample": "", "dilution": "10", "duration_s": "3", "captures": "1"},
    "sample 300 characters": {"sample": "x" * 300, "dilution": "10", "duration_s": "3", "captures": "1"},
    "duration 0": {"sample": "EV lot 7", "dilution": "10", "duration_s": "0", "captures": "1"},
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_form_input_shows_the_control_sockets_message(console, case):
    values = BAD_INPUT[case]
    with ControlClient(console.control) as client:
        with pytest.raises(ExoacqError) as refused:
            client.request("acquire", method="nta", instrument="nta", **{k: as_sent(v) for k, v in values.items()})
    page = console.page("/acquire")
    fill_acquire_form(page, values)
    console.expected_errors.append("/api/acquire")
    page.click("#acquire-submit")
    try:
        page.wait_for_function("() => document.querySelector('#acquire-error').textContent.trim().length > 0 || "
                               "document.querySelector('#acquire-run-id').textContent.trim().length > 0",
                               timeout=TIMEOUT_MS)
        assert page.locator("#acquire-run-id").text_content().strip() == "", "the page started a run"
        error = page.locator("#acquire-error")
        assert error.is_visible()
        assert error.text_content().strip() == str(refused.value)
        if case == "dilution 0":
            console.screenshot(page, "acquire-error")
    finally:
        started = page.locator("#acquire-run-id").text_content().strip()
        if started:  # not to hold up the next runs on the instrument
            with ControlClient(console.control) as client:
                client.request("stop", run_id=started)
        page.close()


@pytest.fixture(scope="module")
def run_from_the_page(console):
    """An NTA run started on the acquire page, watched on the live page while it runs."""
    sample = f"browser EV {uuid.uuid4().hex[:6]}"
    live = console.page("/live/nta")
    live.wait_for_function("() => window.exoacqLive !== undefined", timeout=TIMEOUT_MS)
    acquire = console.page("/acquire")
    fill_acquire_form(acquire, {"sample": sample, "dilution": "100", "duration_s": "3", "captures": "1"})
    acquire.click("#acquire-submit")
    acquire.wait_for_function("() => document.querySelector('#acquire-run-id').textContent.trim().length > 0",
                              timeout=TIMEOUT_MS)
    run_id = acquire.locator("#acquire-run-id").text_content().strip()
    # the live view while the run records: its frame counter rises and the overlay is drawn
    live.wait_for_function("() => window.exoacqLive.framesDrawn > 0", timeout=TIMEOUT_MS)
    counter_before = int(live.locator("#frame-counter").text_content())
    time.sleep(2.0)
    counter_after = int(live.locator("#frame-counter").text_content())
    live.wait_for_function("() => window.exoacqLive.overlayDrawn > 0", timeout=TIMEOUT_MS)
    live_state = live.evaluate("() => ({framesDrawn: window.exoacqLive.framesDrawn, "
                               "overlayDrawn: window.exoacqLive.overlayDrawn, "
                               "latencies_ms: Array.from(window.exoacqLive.latencies_ms)})")
    console.screenshot(live, "live")
    console.screenshot(acquire, "acquire")
    result = next_result(console.results, run_id, timeout_s=90)
    with ControlClient(console.control) as client:
        stored = client.request("run", run_id=run_id)
    live.close()
    acquire.close()
    return {"sample": sample, "run_id": run_id, "counter": (counter_before, counter_after), "live": live_state,
            "result": result, "stored": stored}


def test_acquire_page_starts_a_run_and_the_live_view_draws_it(run_from_the_page):
    before, after = run_from_the_page["counter"]
    assert after > before >= 1, f"#frame-counter {before} -> {after} over 2 s"
    live = run_from_the_page["live"]
    assert live["overlayDrawn"] > 0 and live["framesDrawn"] >= after
    assert live["latencies_ms"] and all(0 < x < 10_000 for x in live["latencies_ms"])
    assert run_from_the_page["stored"]["sample"] == run_from_the_page["sample"]
    assert run_from_the_page["stored"]["state"] == "done"


def test_run_page_shows_the_histogram_and_the_results_numbers(console, run_from_the_page):
    run_id, result = run_from_the_page["run_id"], run_from_the_page["result"]
    stored = run_from_the_page["stored"]["result"]
    # the document on the results socket is the run's stored result
    assert stored["size_nm"]["mean"] == result["size_nm"]["mean"]
    assert stored["concentration_per_ml"] == result["concentration_per_ml"]
    page = console.page(f"/runs/{run_id}")
    page.wait_for_function("() => /\\d/.test(document.querySelector('#result-mean-nm').textContent)",
                           timeout=TIMEOUT_MS)
    assert "done" in page.locator("#run-state").text_content()
    mean_nm = result["size_nm"]["mean"]
    assert number_in(page.locator("#result-mean-nm").text_content()) == pytest.approx(round(mean_nm, 1), abs=1e-9)
    concentration = page.locator("#result-concentration").text_content().strip()
    if result["concentration_per_ml"] is None:
        assert concentration.startswith("—")
    else:
        shown = number_in(concentration)
        assert shown == pytest.approx(float(f"{result['concentration_per_ml']:.2e}"), rel=1e-9), concentration
    # the size histogram is drawn, with the result's counts
    histogram = page.locator("canvas#size-histogram")
    histogram.wait_for(state="visible", timeout=TIMEOUT_MS)
    page.wait_for_function("() => window.Chart && Chart.getChart(document.querySelector('#size-histogram'))",
                           timeout=TIMEOUT_MS)
    drawn = page.evaluate("() => Chart.getChart(document.querySelector('#size-histogram')).data.datasets"
                          ".map(d => d.data.length)")
    assert drawn and max(drawn) > 0
    assert page.locator("#run-files a").count() > 0
    console.screenshot(page, "run")
    page.close()


def test_pages_open_and_the_sample_report_shows_the_mean(console, run_from_the_page):
    run_id, sample = run_from_the_page["run_id"], run_from_the_page["sample"]
    mean_nm = run_from_the_page["result"]["size_nm"]["mean"]
    home = console.page("/")
    home.wait_for_function(f"() => document.querySelector('#latest-runs').textContent.includes({json.dumps(run_id)})",
                           timeout=TIMEOUT_MS)
    assert "nta" in home.locator("#instruments").text_content()
    console.screenshot(home, "home")
    runs = console.page("/runs")
    runs.wait_for_function(f"() => document.body.textContent.includes({json.dumps(run_id)})", timeout=TIMEOUT_MS)
    console.screenshot(runs, "runs")
    samples = console.page("/samples")
    samples.wait_for_function(f"() => document.body.textContent.includes({json.dumps(sample)})", timeout=TIMEOUT_MS)
    console.screenshot(samples, "samples")
    from urllib.parse import quote
    report = console.page(f"/samples/{quote(sample, safe='')}/report?runs={run_id}")
    text = report.locator("body").text_content()
    assert sample in text and run_id in text
    # every number in the report names its run and its place in the result document
    shown = report.locator(f'span.num[data-run="{run_id}"][data-key="size_nm.mean"]')
    assert shown.count() >= 1
    assert float(shown.first.get_attribute("data-value")) == mean_nm
    assert number_in(shown.first.text_content()) == pytest.approx(mean_nm, abs=0.5)
    console.screenshot(report, "sample-report")
    for page in (home, runs, samples, report):
        page.close()


def test_no_errors_in_the_browser_console(console, run_from_the_page):
    unexpected = [e for e in console.errors
                  if not ("status of 400" in e and any(u in e for u in console.expected_errors))]
    assert not unexpected, "\n".join(unexpected)
