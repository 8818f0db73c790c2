"""The web page in a real browser (Debian's headless Chromium through chromium-driver and selenium).

Two kinds of server: a real `nomoat serve` with the embedded model and an adapter that changes its
greedy answers (streaming, the mixer, side by side), and the real app over the fake engine in a
uvicorn thread (deterministic output for the markup test, a held stream for the stop test, keys).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import ROOT, ServerProcess, models_toml
from lora_factory import write_lora
from support.fake_engine import FakeEngine
from support.inprocess import MODEL, fake_registry
from support.threaded import ServedInThread

from nomoat.config import ModelConfig, ModelsFile, embedded_model_path
from nomoat.http.app import build_app
from nomoat.registry import ModelRegistry
from nomoat.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM.exists() and DRIVER.exists()),
    reason="no Chromium: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run does)",
)
# Without the networking flags Chromium's own background traffic meets the closed network.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1440,900")
WAIT = 120.0  # the longest any condition is waited for (a loaded 2-core machine), never a sleep
POEM = "Write a short poem about the sea."


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The embedded model with adapter `sea` (std 0.12 changes the first greedy tokens) and a stack of it."""
    adapters = tmp_path_factory.mktemp("ui-adapters")
    write_lora(adapters / "sea.gguf", seed=1, std=0.12)
    extra = (f'[[adapters]]\nname = "sea"\npath = "{adapters / "sea.gguf"}"\n'
             '[[stacks]]\nname = "half-sea"\nadapters = { sea = 0.5 }\n')
    proc = ServerProcess(models_toml(extra=extra), tmp_path_factory.mktemp("ui-real")).wait_ready()
    yield proc
    proc.close()


class ThreadServer:
    """The real app over fake engines, served by uvicorn on a free port from a thread of this process."""

    def __init__(self, tmp: Path, models: ModelsFile | None = None, **settings: Any) -> None:
        self.monkeypatch = pytest.MonkeyPatch()
        built = Settings(state_dir=tmp / "state", **settings)
        self.registry: ModelRegistry = fake_registry(built, self.monkeypatch, models)
        self.served = ServedInThread(build_app(built, self.registry))
        self.base_url = self.served.url

    @property
    def engine(self) -> FakeEngine:
        return self.registry.engines()[MODEL]  # type: ignore[return-value]

    def stop(self) -> None:
        self.served.stop()
        self.registry.close()
        self.monkeypatch.undo()


@pytest.fixture(scope="module")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    server = ThreadServer(tmp_path_factory.mktemp("ui-fake"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    server = ThreadServer(tmp_path_factory.mktemp("ui-keyed"), api_key="user-key", admin_key="admin-key",
                          adapter_dirs=[tmp_path_factory.mktemp("ui-keyed-adapters")])
    yield server
    server.stop()


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadServer]:
    """Two models, `pinned` (loaded at startup, never unloaded) and `lazy` (loaded on demand), and an adapter
    directory, so runtime adapter loading is on."""
    path = str(embedded_model_path())
    models = ModelsFile(models=[ModelConfig(name="pinned", path=path, load="startup"), ModelConfig(name="lazy", path=path)])
    server = ThreadServer(tmp_path_factory.mktemp("ui-admin"), models, adapter_dirs=[tmp_path_factory.mktemp("ui-dir")])
    yield server
    server.stop()


# --- helpers ---------------------------------------------------------------------------------------

def wait_for(driver: Any, condition: Callable[[], Any], what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.05).until(lambda _: condition(), message=what)


def open_page(driver: Any, url: str, *, ready: bool = True) -> None:
    """The page with nothing kept from an earlier test: storage cleared, then loaded afresh."""
    driver.get(url + "/")
    driver.execute_script("localStorage.clear(); sessionStorage.clear();")
    driver.get(url + "/")
    driver.get_log("browser")  # drop the first load's messages
    if ready:
        wait_for(driver, lambda: driver.execute_script("return document.body.dataset.ready === 'true'"), "page ready")


def console_errors(driver: Any, allow: tuple[str, ...] = ()) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in allow)]


def set_value(driver: Any, selector: str, value: str) -> None:
    """A control's value as if typed: the page hears its input/change events."""
    driver.execute_script(
        "const el = document.querySelector(arguments[0]); el.value = arguments[1];"
        "el.dispatchEvent(new Event('input', {bubbles: true})); el.dispatchEvent(new Event('change', {bubbles: true}));",
        selector, value)


def click(driver: Any, selector: str) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.CSS_SELECTOR, selector).click()


def last_answer(driver: Any) -> dict[str, str]:
    return driver.execute_script(
        "const m = [...document.querySelectorAll('#messages .message.assistant')].at(-1);"
        "return m ? {state: m.dataset.state, text: m.querySelector('.body').textContent,"
        " meta: m.querySelector('.meta').textContent} : null;")


def ask(driver: Any, prompt: str, *, temperature: str = "0", max_tokens: str = "16") -> dict[str, str]:
    """Sends `prompt` in the chat and waits for the answer to end; returns its state, text and meta line."""
    set_value(driver, "#temperature", temperature)
    set_value(driver, "#max-tokens", max_tokens)
    set_value(driver, "#prompt", prompt)
    click(driver, "#send")
    return finished(driver)


def finished(driver: Any) -> dict[str, str]:
    wait_for(driver, lambda: (last_answer(driver) or {}).get("state") not in (None, "streaming"), "the answer ends")
    return last_answer(driver)


def active_sequences(server: ThreadServer) -> int:
    return int(httpx.get(server.base_url + "/status", timeout=30).json()["totals"]["active_sequences"])


def screenshot(driver: Any) -> None:
    """docs/ui.png for the README, only when asked (NOMOAT_UI_SCREENSHOT=1): normal runs leave the tree alone."""
    if os.environ.get("NOMOAT_UI_SCREENSHOT") == "1":
        driver.save_screenshot(str(ROOT / "docs" / "ui.png"))


# --- the real model --------------------------------------------------------------------------------

def test_page_loads_with_models_adapters_and_status_and_no_console_errors(browser, real):
    open_page(browser, real.base_url)
    options = browser.execute_script("return [...document.querySelectorAll('#model option')].map(o => o.textContent)")
    assert options == ["smollm2-135m (loaded)"]
    assert browser.execute_script("return [...document.querySelectorAll('#mixer input[type=range]')]"
                                  ".map(i => [i.dataset.adapter, i.value])") == [["sea", "0"]]
    assert "Stack half-sea" in browser.find_element("css selector", "#mixer").text
    wait_for(browser, lambda: "smollm2-135m" in browser.find_element("css selector", "#server-status .model-card").text,
             "the server panel shows the model")
    panel = browser.find_element("css selector", "#server-status").text
    assert "sea" in panel and "no answer yet" in panel  # a rate only once something was generated
    # No key configured: the admin actions are open, but no adapter directory: no adapter loads at runtime.
    assert browser.execute_script("return document.querySelector('#admin').hidden") is True
    assert console_errors(browser) == []


def test_a_reply_streams_into_the_page_then_finishes(browser, real):
    open_page(browser, real.base_url)
    # Every text the answer shows on its way, recorded by the page itself as the DOM changes.
    browser.execute_script(
        "window.__seen = []; new MutationObserver(() => {"
        " const m = [...document.querySelectorAll('#messages .message.assistant .body')].at(-1);"
        " if (m) window.__seen.push(m.textContent); }).observe(document.querySelector('#messages'),"
        " {childList: true, subtree: true, characterData: true});")
    answer = ask(browser, POEM, max_tokens="32")
    assert answer["state"] == "done", answer
    seen = [text for text in browser.execute_script("return window.__seen") if text]
    assert len(set(seen)) >= 3, seen  # it grew piece by piece ...
    assert all(answer["text"].startswith(text) for text in seen), seen  # ... each a prefix of the end
    assert "adapters: base" in answer["meta"] and "tok/s" in answer["meta"] and "TTFT" in answer["meta"], answer
    stored = browser.execute_script("return JSON.parse(localStorage.getItem('nomoat.conversations'))")
    assert stored[0]["messages"][-1]["content"] == answer["text"]  # kept in local storage
    # The panel's rate is the answer's own, over its generating time, not diluted by idle wall time (a 30 s
    # window read 1.5 tok/s beside 55.8): the two clocks differ only by the stream's delivery.
    rate_line = "return document.querySelector('#server-status .rate').textContent"
    wait_for(browser, lambda: "last answer" in browser.execute_script(rate_line), "the panel shows the answer's rate")
    shown = float(re.search(r"([\d.]+) tok/s", answer["meta"]).group(1))
    panel_rate = float(re.search(r"last answer ([\d.]+) tok/s", browser.execute_script(rate_line)).group(1))
    assert shown / 3 < panel_rate < shown * 3, (answer["meta"], browser.execute_script(rate_line))
    assert console_errors(browser) == []


def test_choosing_an_adapter_changes_the_answer_and_the_shown_set(browser, real):
    open_page(browser, real.base_url)
    base = ask(browser, POEM)
    assert "adapters: base" in base["meta"], base
    set_value(browser, "#mixer input[data-adapter=sea]", "1")
    click(browser, "#messages .regenerate")  # the same conversation again, now under the mixer's set
    tuned = finished(browser)
    assert "adapters: sea@1" in tuned["meta"], tuned
    assert tuned["text"] and tuned["text"] != base["text"], (base, tuned)
    assert browser.execute_script("return document.querySelectorAll('#messages .message').length") == 2
    assert console_errors(browser) == []


def test_side_by_side_answers_under_two_adapter_sets_at_once(browser, real):
    open_page(browser, real.base_url)
    click(browser, "#tab-compare")
    set_value(browser, "#temperature", "0")
    set_value(browser, "#max-tokens", "16")
    set_value(browser, "#column-a .set-select", "adapter:sea")
    set_value(browser, "#column-b .set-select", "base")
    set_value(browser, "#prompt", POEM)
    assert browser.find_element("css selector", "#send").text == "Compare"
    click(browser, "#send")
    columns = ["#column-a", "#column-b"]
    wait_for(browser, lambda: all(browser.execute_script(f"return document.querySelector('{c}').dataset.state") == "done"
                                  for c in columns), "both answers end")
    left, right = (browser.find_element("css selector", c).text for c in columns)
    left_text, right_text = (browser.find_element("css selector", f"{c} .answer").text for c in columns)
    assert "adapters: sea@1" in left and "adapters: base" in right, (left, right)
    assert left_text and right_text and left_text != right_text
    screenshot(browser)
    assert console_errors(browser) == []


# --- a phone -----------------------------------------------------------------------------------------

PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True}


def fits(driver: Any, selector: str) -> bool:
    """`selector` is shown and lies within the viewport's width (reachable without a sideways scroll)."""
    return driver.execute_script(
        "const el = document.querySelector(arguments[0]); const r = el.getBoundingClientRect();"
        "return el.checkVisibility() && r.width > 0 && r.left >= 0 && r.right <= innerWidth;", selector)


def no_sideways_overflow(driver: Any) -> bool:
    return driver.execute_script("return document.documentElement.scrollWidth <= innerWidth && innerWidth === 390")


def test_at_phone_width_every_tab_and_the_settings_are_reachable_and_a_chat_is_answered(browser, real):
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        open_page(browser, real.base_url)
        assert no_sideways_overflow(browser)
        for tab, view in (("#tab-compare", "#compare-view"), ("#tab-chat", "#chat-view")):
            assert fits(browser, tab), tab
            click(browser, tab)
            assert fits(browser, view) and no_sideways_overflow(browser), tab
        assert not browser.find_element("css selector", "#side").is_displayed()  # a drawer until asked for
        click(browser, "#toggle-side")
        for control in ("#system-prompt", "#temperature", "#max-tokens", "#mixer input[data-adapter=sea]",
                        "#server-status .model-card"):
            assert fits(browser, control), control
        assert no_sideways_overflow(browser)
        set_value(browser, "#max-tokens", "16")
        set_value(browser, "#temperature", "0")
        click(browser, "#toggle-conversations")
        assert fits(browser, "#new-chat") and not browser.find_element("css selector", "#side").is_displayed()
        click(browser, "#toggle-conversations")
        assert fits(browser, "#prompt") and fits(browser, "#send")
        set_value(browser, "#prompt", POEM)
        click(browser, "#send")
        answer = finished(browser)
        assert answer["state"] == "done" and answer["text"], answer
        assert fits(browser, "#messages .message.assistant") and no_sideways_overflow(browser)
        assert console_errors(browser) == []
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


# --- the fake engine: deterministic output, held streams, keys -------------------------------------

def test_stop_ends_the_stream_and_the_server_stops_generating(browser, fake_server):
    engine = fake_server.engine
    engine.hold = threading.Event()  # every generation pauses after its first token until cancelled
    try:
        open_page(browser, fake_server.base_url)
        set_value(browser, "#prompt", "a long answer, please")
        click(browser, "#send")
        wait_for(browser, lambda: (last_answer(browser) or {}).get("text"), "the first token shows")
        assert engine.outstanding == 1 and last_answer(browser)["state"] == "streaming"
        assert active_sequences(fake_server) == 1
        click(browser, "#stop")
        answer = finished(browser)
        assert answer["state"] == "stopped" and "stopped" in answer["meta"], answer
        # The hold was never released: the generation ended only because the server cancelled it
        # when the page dropped the stream.
        wait_for(browser, lambda: engine.outstanding == 0, "the server cancels the generation")
        assert active_sequences(fake_server) == 0
        assert not engine.hold.is_set()
        assert browser.find_element("css selector", "#send").is_enabled()
        assert not browser.find_element("css selector", "#stop").is_enabled()
    finally:
        engine.hold = None
    assert console_errors(browser) == []


def test_model_output_with_markup_is_shown_as_text(browser, fake_server):
    open_page(browser, fake_server.base_url)
    markup = ('<script>window.__pwned = 1</script><img src="/ui/none.png" onerror="window.__pwned = 2">'
              ' **bold** and `<b>code</b>`\n```html\n<iframe src="/"></iframe>\n```\n# Heading\n- one\n- *two*\n\n3. three')
    answer = ask(browser, "SAY:" + markup, max_tokens="400")  # the fake model answers exactly this
    assert answer["state"] == "done", answer
    assert '<script>window.__pwned = 1</script><img src="/ui/none.png" onerror="window.__pwned = 2">' in answer["text"]
    assert '<iframe src="/"></iframe>' in answer["text"]
    live = browser.execute_script(
        "return document.querySelectorAll('#messages script, #messages img, #messages iframe, #messages b').length")
    assert live == 0
    assert browser.execute_script("return window.__pwned === undefined")
    assert browser.execute_script("return document.querySelector('#messages .assistant strong').textContent") == "bold"
    assert browser.execute_script("return document.querySelector('#messages .assistant pre code').textContent") \
        == '<iframe src="/"></iframe>'
    shape = browser.execute_script(
        "const a = document.querySelector('#messages .assistant .body');"
        "return [a.querySelector('h3').textContent, [...a.querySelectorAll('ul li')].map(li => li.innerText),"
        " a.querySelector('ul em').textContent, a.querySelector('ol').start];")
    assert shape == ["Heading", ["one", "two"], "two", 3]
    assert console_errors(browser) == []


def test_with_an_api_key_the_page_asks_for_it_then_works(browser, keyed_server):
    open_page(browser, keyed_server.base_url, ready=False)
    dialog_open = "return document.querySelector('#key-dialog').open"
    wait_for(browser, lambda: browser.execute_script(dialog_open), "the page asks for a key")
    browser.find_element("css selector", "#key-input").send_keys("wrong-key")
    click(browser, "#key-ok")
    wait_for(browser, lambda: browser.execute_script(dialog_open)
             and "refused" in browser.find_element("css selector", "#key-error").text, "a refused key asks again")
    browser.find_element("css selector", "#key-input").send_keys("user-key")
    click(browser, "#key-ok")
    wait_for(browser, lambda: browser.execute_script("return document.body.dataset.ready === 'true'"), "page ready")
    assert browser.execute_script("return sessionStorage.getItem('nomoat.key')") == "user-key"
    assert browser.execute_script("return localStorage.getItem('nomoat.key')") is None
    answer = ask(browser, "hello")
    assert answer["state"] == "done" and answer["text"] == "You said: hello", answer
    wait_for(browser, lambda: "smollm2-135m" in browser.find_element("css selector", "#server-status").text, "status")
    assert not browser.find_element("css selector", "#admin").is_displayed()  # a user key: no admin actions

    open_page(browser, keyed_server.base_url, ready=False)
    wait_for(browser, lambda: browser.execute_script(dialog_open), "a new session asks again")
    browser.find_element("css selector", "#key-input").send_keys("admin-key")
    click(browser, "#key-ok")
    wait_for(browser, lambda: browser.find_element("css selector", "#admin").is_displayed(), "admin actions show")
    # The only errors: the two requests the server refused before a key was given.
    assert console_errors(browser, allow=("401 (Unauthorized)",)) == []

# --- the admin actions: only what the server allows, and errors that stay -------------------------

def panel_refreshes(driver: Any) -> int:
    return int(driver.execute_script("return document.querySelector('#server-status').dataset.refreshes || 0"))


def lifecycle_buttons(driver: Any) -> list[str]:
    return driver.execute_script("return [...document.querySelectorAll('#server-status .lifecycle button')]"
                                 ".map(b => b.textContent)")


def test_without_adapter_dirs_or_an_unpinned_model_no_admin_action_is_offered(browser, fake_server):
    open_page(browser, fake_server.base_url)
    wait_for(browser, lambda: panel_refreshes(browser) >= 1, "the panel shows the status")
    assert not browser.find_element("css selector", "#admin").is_displayed()  # runtime loading is off
    assert lifecycle_buttons(browser) == []  # the one model is pinned: no Unload
    assert console_errors(browser) == []


def test_admin_errors_stay_until_dismissed_and_a_pinned_model_has_no_unload(browser, admin_server):
    open_page(browser, admin_server.base_url)
    wait_for(browser, lambda: lifecycle_buttons(browser), "the lifecycle buttons show")
    assert lifecycle_buttons(browser) == ["Load lazy"]  # and no "Unload pinned": it would answer 409
    assert browser.find_element("css selector", "#admin").is_displayed()  # adapter directories: runtime loading
    set_value(browser, "#adapter-name", "nowhere")
    set_value(browser, "#adapter-path", "missing.gguf")
    click(browser, "#adapter-load button[type=submit]")
    error = "return document.querySelector('#server-status .admin-error')?.textContent || ''"
    wait_for(browser, lambda: "missing.gguf" in browser.execute_script(error), "the load's error shows")
    seen = panel_refreshes(browser)
    wait_for(browser, lambda: panel_refreshes(browser) >= seen + 1, "the panel refreshes")
    assert "missing.gguf" in browser.execute_script(error)  # the refresh kept it
    click(browser, "#server-status .admin-error button")
    assert browser.execute_script(error) == ""
    wait_for(browser, lambda: panel_refreshes(browser) >= seen + 2, "the panel refreshes again")
    assert browser.execute_script(error) == ""  # dismissed for good
    assert console_errors(browser, allow=("404 (Not Found)", "400 (Bad Request)", "403 (Forbidden)")) == []
