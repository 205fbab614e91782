"""The operator console in a real browser: Debian's chromium driven by Playwright.

No browser is downloaded: Playwright launches the system's chromium (GATEWAY_CHROMIUM,
default /usr/bin/chromium), and axe-core comes from npm (GATEWAY_AXE_CORE, default
.cache/npm/node_modules/axe-core/axe.min.js, where .ci/run installs it). Without them the
tests skip, and fail where GATEWAY_REQUIRE_BROWSER=1 (CI). Screenshots go to
GATEWAY_SCREENSHOTS when set (that is how docs/console.png is made), else to the test's
tmp dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from gateway.app import create_app
from gateway.config import load_config
from gateway.console import setup as console_setup
from gateway.typedefs import GATEWAY
from tests.conftest import RUNTIME_ID, eventually, unavailable
from tests.holding import Holding

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("GATEWAY_CHROMIUM", "/usr/bin/chromium")
AXE = Path(os.environ.get("GATEWAY_AXE_CORE",
                          ROOT / ".cache/npm/node_modules/axe-core/axe.min.js"))
REQUIRE = "GATEWAY_REQUIRE_BROWSER"
ADMIN = "console-admin-key-4242"
HEALTH_S = 0.5      # health.interval_s of the test gateway (unhealthy_after 1)
REFRESH_S = 2.0     # the page's refresh (console.js REFRESH_MS)
WIDTHS = (390, 1440)


def gateway_yaml(fake_url: str, gate_url: str, state: Path, extra_backend: str = "",
                 broken: bool = False) -> str:
    return (f"server: {{admin_key: {ADMIN}}}\n"
            f"health: {{interval_s: {HEALTH_S}, unhealthy_after: 1, healthy_after: 1}}\n"
            "queue: {max_wait_s: 120}\n"   # the held requests wait out the whole test
            f"state: {{sqlite: '{state}'}}\n"
            "auth:\n  keys:\n    - {name: team, key: sk-team-secret-1}\n"
            "    - {name: batch-jobs, key: sk-batch-secret-2, priority: batch, share: 2,\n"
            "       max_concurrency: 4, budget: {tokens_per_day: 200000,"
            " tokens_per_month: 5000000}}\n"
            "backends:\n"
            f"  gpu-a: {{kind: vllm, url: '{fake_url}', models: {{m: {RUNTIME_ID}}}}}\n"
            "  cpu-b: {kind: echo, models: [m], max_concurrency: 8}\n"
            f"  gpu-q: {{kind: openai, url: '{gate_url}', models: [{SLOW}], max_concurrency: 1}}\n"
            + extra_backend
            + ("routes: {m: {strategy: no-such-strategy}}\n" if broken else ""))


SLOW = "slow"   # the model of gpu-q, a runtime that holds every answer until let go
KEYS = {"team": "sk-team-secret-1", "batch-jobs": "sk-batch-secret-2"}


@dataclass
class Served:
    base: str
    path: Path
    fake: Any
    app: Any
    gate: Holding
    urls: tuple[str, str, Path]   # gateway_yaml's: the fake's, the gate's, the state file
    held: list[asyncio.Task] = field(default_factory=list)

    def yaml(self, **kw: Any) -> str:
        return gateway_yaml(*self.urls, **kw)

    async def chat(self, request_id: str, model: str = "m", stream: bool = False,
                   key: str = "team") -> int:
        async with aiohttp.ClientSession() as s:
            async with s.post(self.base + "/v1/chat/completions", json={
                    "model": model, "stream": stream,
                    "messages": [{"role": "user", "content": "hello console"}]},
                    headers={"Authorization": f"Bearer {KEYS[key]}",
                             "X-Request-ID": request_id}) as r:
                await r.read()
                return r.status

    async def hold(self) -> None:
        """One request of `team` running on gpu-q, held; then `team`'s and two of
        `batch-jobs` waiting behind it, in the queue's standard and batch rows."""
        queue = self.app[GATEWAY].dispatcher.queue
        for i, key in enumerate(("team", "team", "batch-jobs", "batch-jobs")):
            self.held.append(asyncio.create_task(self.chat(f"held-{i}", SLOW, key=key)))
            assert await eventually(lambda: len(self.gate.arrived) == 1 and queue.waiting == i,
                                    timeout=5)

    async def release(self) -> list[int]:
        self.gate.release_all()
        return list(await asyncio.wait_for(asyncio.gather(*self.held), 10))


@pytest.fixture
async def served(tmp_path, aiohttp_server, start_runtime) -> AsyncIterator[Served]:
    fake, runtime = await start_runtime(models=(RUNTIME_ID,))
    gate = Holding(usage=(40, 60), models=(SLOW,))
    gate_server = await aiohttp_server(gate.app(), host="127.0.0.1")
    urls = (runtime.url("/v1"), f"http://127.0.0.1:{gate_server.port}/v1",
            tmp_path / "state.sqlite")
    path = tmp_path / "gateway.yaml"
    path.write_text(gateway_yaml(*urls))
    app = create_app(load_config(str(path)), str(path))
    server = await aiohttp_server(app, host="127.0.0.1")
    found = Served(f"http://127.0.0.1:{server.port}", path, fake, app, gate, urls)
    yield found
    gate.release_all()   # nothing left held when the servers close


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[test]')", REQUIRE)
    if not os.access(CHROMIUM, os.X_OK):
        unavailable(f"no chromium at {CHROMIUM} (apt-get install chromium)", REQUIRE)
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            await launched.close()


@dataclass
class Tab:
    page: Any
    requests: list[str]
    problems: list[str]   # script errors and CSP violations


async def open_tab(browser, width: int = 1440, **context: Any) -> Tab:
    ctx = await browser.new_context(viewport={"width": width, "height": 900}, **context)
    page = await ctx.new_page()
    tab = Tab(page, [], [])
    page.on("request", lambda r: tab.requests.append(r.url))
    page.on("console", lambda m: tab.problems.append(m.text) if m.type == "error"
            and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: tab.problems.append(str(e)))
    return tab


async def sign_in(tab: Tab, base: str, key: str = ADMIN) -> None:
    page = tab.page
    await page.goto(base + "/admin/")
    assert page.url == base + "/admin/login"   # no session yet
    await page.fill("#key", key)
    async with page.expect_navigation():
        await page.press("#key", "Enter")


async def live(tab: Tab) -> None:
    """Until the page has drawn the gateway's state once."""
    await tab.page.wait_for_selector("#backends tbody tr[data-backend]", timeout=5000)


def state_of(page, backend: str):
    return page.locator(f'#backends tr[data-backend="{backend}"]')


async def test_sign_in_a_wrong_key_and_sign_out(served, browser):
    tab = await open_tab(browser)
    page = tab.page
    await sign_in(tab, served.base, "wrong-key")
    assert page.url == served.base + "/admin/login"
    assert "not the admin key" in await page.locator("[role=alert]").inner_text()
    assert await page.context.cookies() == []

    await page.fill("#key", ADMIN)
    await page.click("button[type=submit]")
    await page.wait_for_url(served.base + "/admin/")
    await live(tab)
    assert await state_of(page, "gpu-a").locator(".state").inner_text() == "up"
    # The key is nowhere the page or its scripts can reach; the cookie is HttpOnly.
    assert ADMIN not in await page.content()
    assert await page.evaluate("document.cookie") == ""
    assert await page.evaluate("localStorage.length + sessionStorage.length") == 0
    assert all(ADMIN not in url for url in tab.requests)
    [cookie] = await page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] > 0

    await page.click("#signout")
    await page.wait_for_url(served.base + "/admin/login")
    assert await page.context.cookies() == []
    await page.goto(served.base + "/admin/")
    assert page.url == served.base + "/admin/login"
    assert tab.problems == []


async def test_a_backend_going_down_shows_down_within_a_health_interval_and_a_refresh(
        served, browser):
    tab = await open_tab(browser)
    await sign_in(tab, served.base)
    await live(tab)
    row = state_of(tab.page, "gpu-a")
    assert await row.get_attribute("data-state") == "up"
    served.fake.health_status = 503
    went = time.monotonic()
    # One health interval (jitter: up to 1.1 x) plus one refresh, and a little for the
    # browser and this machine.
    within = HEALTH_S * 1.1 + REFRESH_S + 1.0
    await tab.page.wait_for_selector('#backends tr[data-backend="gpu-a"][data-state="down"]',
                                     timeout=within * 1000)
    assert time.monotonic() - went <= within
    assert await row.locator(".state").inner_text() == "down"   # in words, not colour alone
    assert await state_of(tab.page, "cpu-b").get_attribute("data-state") == "up"


async def test_a_request_appears_in_the_tail_and_the_filters_narrow_it(served, browser):
    tab = await open_tab(browser)
    page = tab.page
    await sign_in(tab, served.base)
    await live(tab)
    statuses = [await served.chat(f"tail-{i}") for i in range(4)]
    assert statuses == [200] * 4
    assert await served.chat("tail-missing", model="no-such-model") == 404
    await page.wait_for_selector('#tail-table tr[data-request-id="tail-missing"]',
                                 timeout=REFRESH_S * 1000 + 1500)
    rows = page.locator("#tail-table tbody tr")
    assert await rows.count() == 5
    first = await page.locator('#tail-table tr[data-request-id="tail-0"]').inner_text()
    assert "team" in first and "sk-team-secret-1" not in await page.content()

    await page.select_option("#f-status", "404")
    await eventually_count(rows, 1)
    await page.select_option("#f-status", "")
    backend = await page.locator('#tail-table tr[data-request-id="tail-0"] td').nth(3).inner_text()
    await page.select_option("#f-backend", backend)
    shown = await eventually_count(rows, None)
    assert 1 <= shown <= 4
    await page.select_option("#f-backend", "")
    await page.select_option("#f-key", "team")
    await page.select_option("#f-model", "m")
    assert await eventually_count(rows, 4) == 4


async def eventually_count(rows, expected: int | None) -> int:
    """The rows' count once it is `expected` (or stable and non-zero when None)."""
    async def check() -> int | bool:
        n = await rows.count()
        return n if (n == expected if expected is not None else n > 0) else False
    found = await eventually(check, timeout=3, interval=0.05)
    assert found is not False, f"expected {expected} rows, have {await rows.count()}"
    return found


async def test_reload_applies_an_edit_of_the_file_and_reports_a_bad_one(served, browser):
    tab = await open_tab(browser)
    page = tab.page
    await sign_in(tab, served.base)
    await live(tab)
    served.path.write_text(served.yaml(extra_backend="  new-c: {kind: echo, models: [m2]}\n"))
    await page.click("#reload")
    await page.wait_for_selector("#reload-result.ok", timeout=5000)
    assert "applied" in await page.locator("#reload-result").inner_text()
    await page.wait_for_selector('#backends tr[data-backend="new-c"]', timeout=5000)
    await page.wait_for_selector('#models tr[data-model="m2"]', timeout=5000)

    served.path.write_text(served.yaml(broken=True))
    await page.click("#reload")
    await page.wait_for_selector("#reload-result.error", timeout=5000)
    text = await page.locator("#reload-result").inner_text()
    assert "refused" in text and "routes.m.strategy" in text
    assert "new-c" in served.app[GATEWAY].config.backends   # nothing changed
    assert tab.problems == []


@pytest.fixture
def fast_history(monkeypatch) -> None:
    """A history point every 0.5 s, not 5 s: charts with a shape within seconds. Asked for
    before `served`, so the gateway's sampler starts with it."""
    monkeypatch.setattr(console_setup, "STEP_S", 0.5)


async def test_both_widths_by_keyboard_alone_with_screenshots(fast_history, served, browser,
                                                               tmp_path):
    shots = Path(os.environ.get("GATEWAY_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    for i in range(12):   # traffic over a few history steps: charts with a shape
        assert await served.chat(f"shot-{i}", stream=True,
                                 key="batch-jobs" if i % 3 == 0 else "team") == 200
        await asyncio.sleep(0.15 * (i % 4))
    await served.hold()   # keys with requests in flight and queued, the queue's rows
    for width in WIDTHS:
        tab = await open_tab(browser, width)
        page = tab.page
        await page.goto(served.base + "/admin/login")
        # The key field has the focus from the start (autofocus): type, then Enter.
        assert await page.evaluate("document.activeElement.id") == "key"
        await page.keyboard.type(ADMIN)
        await page.keyboard.press("Enter")
        await page.wait_for_url(served.base + "/admin/")
        await live(tab)
        # Reload, by keyboard: tab to the button (a bounded number of presses), then Enter.
        for _ in range(80):
            await page.keyboard.press("Tab")
            if await page.evaluate("document.activeElement.id") == "reload":
                break
        assert await page.evaluate("document.activeElement.id") == "reload"
        await page.keyboard.press("Enter")
        await page.wait_for_selector("#reload-result.ok", timeout=5000)
        # Nothing wider than the window: no sideways scrolling of the page itself.
        assert await page.evaluate("document.documentElement.scrollWidth") <= width
        await page.wait_for_selector("#backends svg.spark polyline", timeout=5000)
        await page.wait_for_selector('#queue-table tr[data-priority="batch"]', timeout=5000)
        await page.screenshot(path=str(shots / f"console-{width}.png"), full_page=True)
        if width == 1440:   # the README's picture: the fleet, the keys and the queue
            bottom = await page.evaluate("document.getElementById('keys')"
                                         ".getBoundingClientRect().bottom + window.scrollY")
            await page.screenshot(path=str(shots / "console.png"), full_page=True,
                                  clip={"x": 0, "y": 0, "width": width, "height": bottom + 16})
        assert tab.problems == []
        await page.context.close()
    assert await served.release() == [200] * 4


async def test_no_serious_or_critical_axe_violations_at_either_width(served, browser):
    if not AXE.is_file():
        unavailable(f"no axe-core at {AXE} (npm install --prefix .cache/npm axe-core)",
                    REQUIRE)
    axe = AXE.read_text()
    assert await served.chat("a11y") == 200
    for width in WIDTHS:
        # Only this context lets the test's own script in past the page's CSP.
        tab = await open_tab(browser, width, bypass_csp=True)
        page = tab.page
        await page.goto(served.base + "/admin/login")
        assert await serious_violations(page, axe) == []
        await page.fill("#key", ADMIN)
        await page.press("#key", "Enter")
        await page.wait_for_url(served.base + "/admin/")
        await live(tab)
        await page.wait_for_selector("#tail-table tbody tr", timeout=5000)
        if width == WIDTHS[0]:
            await served.hold()   # the queue's table with rows, the keys with figures
        await page.wait_for_selector('#queue-table tr[data-priority="batch"]', timeout=5000)
        assert await serious_violations(page, axe) == []
        await page.context.close()
    assert await served.release() == [200] * 4


async def cells(row) -> list[str]:
    return [text.strip() for text in await row.locator("td").all_inner_texts()]


async def test_the_keys_and_queue_views_show_live_figures(served, browser):
    """GET /admin/keys' figures per key (class, in flight, queued, tokens, budget left) and
    the queue per model and class with its oldest wait, in a table with headers; the
    queue's rows gone once the requests run."""
    tab = await open_tab(browser)
    page = tab.page
    assert await served.chat("spend", key="batch-jobs") == 200
    await sign_in(tab, served.base)
    await live(tab)
    await served.hold()
    batch = page.locator('#queue-table tr[data-model="slow"][data-priority="batch"]')
    await batch.wait_for(timeout=REFRESH_S * 1000 + 1500)
    heads = await page.locator("#queue-table thead th[scope=col]").all_inner_texts()
    assert heads == ["Model", "Class", "Waiting", "Oldest wait"]
    assert "model and class" in await page.locator("#queue-table caption").inner_text()
    model, cls, waiting, oldest = await cells(batch)
    assert (model, cls, waiting) == ("slow", "batch", "2")
    assert oldest.endswith(" s") and float(oldest[:-2]) >= 0
    standard = page.locator('#queue-table tr[data-model="slow"][data-priority="standard"]')
    assert (await cells(standard))[:3] == ["slow", "standard", "1"]
    # The oldest wait grows from one refresh to the next.
    grown = await eventually(lambda: _longer(batch, float(oldest[:-2])), timeout=5,
                             interval=0.2)
    assert grown, "the oldest wait did not grow"
    summary = await page.locator("#queue").inner_text()
    assert summary.startswith("3 request(s) waiting")

    key = await cells(page.locator('#keys-table tr[data-key="batch-jobs"]'))
    used = served.app[GATEWAY].tenants.budgets.used("batch-jobs")[0]
    assert used > 0   # the "spend" request's tokens
    assert key[:2] == ["batch-jobs", "batch"] and key[2] == "2"
    assert key[5:7] == ["0 / 4", "2"]   # in flight / its max_concurrency, queued
    assert key[7] == f"{used} / {used}"
    assert key[8] == f"{200000 - used} / {5000000 - used}"
    team = await cells(page.locator('#keys-table tr[data-key="team"]'))
    assert team[5:7] == ["1 / no limit", "1"] and team[8] == "no budget"
    assert "does not serve" not in await page.locator("#keys").inner_text()

    assert await served.release() == [200] * 4
    await page.locator("#queue-table tbody tr", has_text="Nothing is waiting").wait_for(
        timeout=REFRESH_S * 1000 + 1500)
    assert await page.locator("#queue-table tr[data-priority]").count() == 0
    assert tab.problems == []


async def _longer(row, than: float) -> bool:
    oldest = (await cells(row))[3]
    return float(oldest[:-2]) > than


async def serious_violations(page, axe: str) -> list[str]:
    await page.add_script_tag(content=axe)
    result = await page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [f"{v['id']} ({v['impact']}): {v['help']} at "
            + json.dumps([n["target"] for n in v["nodes"]][:3])
            for v in result["violations"] if v["impact"] in ("serious", "critical")]


async def test_the_page_asks_no_other_origin_and_breaks_no_csp_rule(served, browser):
    tab = await open_tab(browser)
    page = tab.page
    await sign_in(tab, served.base)
    await live(tab)
    assert await served.chat("origin-check", stream=True) == 200
    await page.wait_for_selector('#tail-table tr[data-request-id="origin-check"]',
                                 timeout=REFRESH_S * 1000 + 1500)
    await page.click("#reload")
    await page.wait_for_selector("#reload-result.ok", timeout=5000)
    assert tab.requests, "the page made no request at all?"
    others = [url for url in tab.requests if not url.startswith(served.base + "/")]
    assert others == []
    assert {u.split("?")[0] for u in tab.requests} >= {
        served.base + "/admin/static/console.js", served.base + "/admin/static/charts.js",
        served.base + "/admin/static/console.css", served.base + "/admin/console/state"}
    assert tab.problems == []   # a CSP violation would be a console error
    # The CSP is in force: an inline script does not run.
    ran = await page.evaluate("""() => { const s = document.createElement('script');
        s.textContent = 'window.inlineRan = true'; document.body.appendChild(s);
        return window.inlineRan === true; }""")
    assert ran is False
    await asyncio.sleep(0)   # let the violation report reach the console listener
