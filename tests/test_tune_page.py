"""The page's fine-tuning view: served under the page's policy, and in headless Chromium against the real app with
OpenAI's fine-tuning routes faked in front of it (a job moves a step per look): a file uploaded, the job's loss
curve drawn as it trains, then "Compare with base" and "Chat with it" a click away, at desktop and phone width."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_ui_browser
from support.fake_tuning import FakeTuning
from support.inprocess import MODEL, fake_registry
from support.threaded import ServedInThread
from test_ui_browser import (
    CHROMIUM,
    DRIVER,
    PHONE,
    click,
    console_errors,
    fits,
    no_sideways_overflow,
    open_page,
    set_value,
    wait_for,
)

from nomoat.http.app import build_app
from nomoat.http.ui import CONTENT_SECURITY_POLICY, STATIC_DIR
from nomoat.settings import Settings

# The page's browser fixture (one Chromium for this module), registered here by this name.
chromium = test_ui_browser.browser
needs_chromium = pytest.mark.skipif(not (CHROMIUM.exists() and DRIVER.exists()),
                                    reason="no Chromium (apt-get install chromium chromium-driver)")


def test_the_view_and_its_modules_are_served_under_the_pages_policy(fake):
    page = fake.client.get("/")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    for element in ('id="tab-tune"', 'id="tune-view"', 'id="tune-file"', 'id="tune-model"', 'id="tune-curve"',
                    'id="tune-chat"', 'id="tune-compare"', 'id="tune-cancel"', 'id="tune-pause"', 'id="tune-resume"'):
        assert element in page.text
    for module in ("tune.js", "curve.js"):
        r = fake.client.get(f"/ui/js/{module}")
        assert r.status_code == 200 and r.headers["content-type"] == "text/javascript; charset=utf-8"
    # The curve is built with DOM calls (createElementNS), never from markup text.
    assert "createElementNS" in (STATIC_DIR / "js" / "curve.js").read_text()


@pytest.fixture(scope="module")
def tuning(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeTuning]:
    monkeypatch = pytest.MonkeyPatch()
    settings = Settings(state_dir=tmp_path_factory.mktemp("tune-page") / "state")
    registry = fake_registry(settings, monkeypatch)
    faked = FakeTuning(build_app(settings, registry), steps=3)
    served = ServedInThread(faked)
    faked.url = served.url
    yield faked
    served.stop()
    registry.close()
    monkeypatch.undo()


def curve(driver: Any) -> dict[str, Any]:
    return driver.execute_script(
        "const svg = document.querySelector('#tune-curve svg'); if (!svg) return {status: null};"
        "const points = (c) => (svg.querySelector(c)?.getAttribute('points') || '').split(' ').filter(Boolean).length;"
        "return {points: Number(svg.dataset.points), train: points('polyline.curve-train'),"
        " valid: points('polyline.curve-valid'), status: document.querySelector('#tune-job').dataset.status};")


@needs_chromium
def test_a_file_uploaded_trains_with_its_curve_then_compare_and_chat_are_a_click_away(chromium, tuning, tmp_path: Path):
    data = tmp_path / "zorbia.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Capital of Zorbia?"},
                                             {"role": "assistant", "content": "Quellport."}]}) + "\n")
    browser = chromium
    open_page(browser, tuning.url)
    click(browser, "#tab-tune")
    assert browser.find_element("css selector", "#composer").is_displayed() is False
    browser.find_element("css selector", "#tune-file").send_keys(str(data))
    wait_for(browser, lambda: browser.execute_script("return document.querySelector('#tune-model').value") == MODEL,
             "the base models listed")
    set_value(browser, "#tune-suffix", "zorbia")
    set_value(browser, "#tune-epochs", "2")
    click(browser, "#tune-start")
    wait_for(browser, lambda: curve(browser)["status"] == "succeeded", "the job succeeds")
    assert curve(browser) == {"points": 3, "train": 3, "valid": 3, "status": "succeeded"}
    assert tuning.uploads["file-0"] == ("fine-tune", data.read_bytes())
    job = tuning.jobs["ftjob-0"]
    assert job.body["method"] == {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}
    model = f"ft:{MODEL}:zorbia:ftjob-0"
    assert browser.execute_script("return document.querySelector('#tune-jobs .job-status').textContent") == "succeeded"

    click(browser, "#tune-compare")
    wait_for(browser, lambda: browser.find_element("css selector", "#compare-view").is_displayed(), "side by side")
    chosen = browser.execute_script("return [...document.querySelectorAll('.set-select')].map(s => s.value)")
    assert chosen == [f"model:{model}", "base"]
    assert browser.execute_script("return document.querySelector('#model').value") == MODEL

    click(browser, "#tab-tune")
    click(browser, "#tune-chat")
    wait_for(browser, lambda: browser.find_element("css selector", "#chat-view").is_displayed(), "the chat")
    assert browser.execute_script("return document.querySelector('#model').value") == model
    assert console_errors(browser) == []


@needs_chromium
def test_at_phone_width_the_view_fits(chromium, tuning):
    browser = chromium
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        open_page(browser, tuning.url)
        click(browser, "#tab-tune")
        for control in ("#tune-file", "#tune-model", "#tune-start", "#tune-jobs"):
            assert fits(browser, control), control
        assert no_sideways_overflow(browser)
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
