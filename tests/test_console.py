"""The operator console's rules, without a browser: the session cookie, CSRF, the
Content-Security-Policy, what its JSON shows (history, tail, states), and --workers."""

from __future__ import annotations

import asyncio
import math
import os
import time
from dataclasses import replace

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.app import create_app
from gateway.config import ApiKey, Budget, ServerConfig, StateConfig, backend
from gateway.console.history import BOUNDS, STEP_S, Counts, History, p50, read_counts
from gateway.console.pages import CSP
from gateway.console.session import COOKIE, Sessions
from gateway.console.share import FRESH_S, WorkerShare
from gateway.dispatch.scheduler import Scheduler, Waiter
from gateway.limits.tickets import KeyState, Ticket
from gateway.workers.rundir import RunDir
from gateway.typedefs import CONSOLE, GATEWAY
from tests.conftest import CHAT, bearer, eventually, make_config
from tests.holding import Holding
from tests.server_procs import Served, start

ADMIN = "the-admin-key-0123456789"
ECHO_CHAT = {**CHAT, "model": "m"}


def console_config(**server):
    return make_config(backend("a", "echo", None, models=("m",)),
                       backend("b", "echo", None, models=("m",)),
                       server=ServerConfig(admin_key=ADMIN, **server),
                       auth_keys=(ApiKey("team", "sk-team-secret"),))


@pytest.fixture
async def client(aiohttp_client: AiohttpClient) -> TestClient:
    return await aiohttp_client(create_app(console_config()))


async def sign_in(client: TestClient, key: str = ADMIN) -> aiohttp.ClientResponse:
    return await client.post("/admin/login", data={"key": key}, allow_redirects=False)


async def csrf(client: TestClient) -> str:
    resp = await client.get("/admin/console/session")
    assert resp.status == 200
    return (await resp.json())["csrf_token"]


def same_origin(client: TestClient) -> dict[str, str]:
    return {"Origin": str(client.make_url("/")).rstrip("/")}


async def test_the_page_needs_a_session_and_the_login_page_is_served_under_a_strict_csp(client):
    resp = await client.get("/admin/", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/login"
    page = await client.get("/admin/login")
    assert page.status == 200 and page.content_type == "text/html"
    html = await page.text()
    assert 'name="key"' in html and "<script" not in html
    csp = page.headers["Content-Security-Policy"]
    assert csp == CSP
    assert "unsafe-inline" not in csp and "http" not in csp and "*" not in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Referrer-Policy"] == "same-origin"   # no-referrer would make Origin null
    assert page.headers["Cache-Control"] == "no-store"


async def test_a_wrong_key_gets_the_form_again_and_no_cookie(client):
    resp = await sign_in(client, "not-the-key")
    assert resp.status == 401
    assert "not the admin key" in await resp.text()
    assert COOKIE not in resp.cookies
    assert (await client.get("/admin/backends")).status == 401


async def test_signing_in_sets_a_strict_expiring_cookie_that_is_not_the_key(client):
    resp = await sign_in(client)
    assert resp.status == 303 and resp.headers["Location"] == "/admin/"
    morsel = resp.cookies[COOKIE]
    assert morsel["httponly"] and morsel["samesite"] == "Strict" and morsel["path"] == "/admin"
    assert 12 * 3600 - 60 < int(morsel["max-age"]) <= 12 * 3600
    assert not morsel["secure"]   # plain HTTP here; behind TLS see the next test
    assert ADMIN not in morsel.value and ADMIN not in resp.headers["Set-Cookie"]
    page = await client.get("/admin/")
    assert page.status == 200 and ADMIN not in await page.text()
    assert '<script src="/admin/static/console.js"' in await page.text()
    # The session admits the admin JSON endpoints, as the bearer key does.
    assert (await client.get("/admin/backends")).status == 200
    assert (await client.get("/admin/config")).status == 200


async def test_behind_tls_the_cookie_is_secure(client):
    resp = await client.post("/admin/login", data={"key": ADMIN}, allow_redirects=False,
                             headers={"X-Forwarded-Proto": "https"})
    assert resp.cookies[COOKIE]["secure"]


async def test_a_forged_or_altered_cookie_is_refused(client):
    await sign_in(client)
    good = client.session.cookie_jar.filter_cookies(client.make_url("/admin/"))[COOKIE].value
    sid, expires, mac = good.split(".")
    other = "B" if sid[-1] == "A" else "A"
    for forged in (f"{sid}.{int(expires) + 3600}.{mac}", f"{sid[:-1]}{other}.{expires}.{mac}",
                   f"{sid}.{expires}.{mac[:-2]}", "x", ADMIN, ""):
        resp = await client.get("/admin/backends", cookies={COOKIE: forged})
        assert resp.status == 401, forged


def test_an_expired_session_is_refused_and_signing_out_ends_it():
    sessions = Sessions(lifetime_s=-1)
    cookie, _ = sessions.start()
    assert sessions.find(cookie) is None
    sessions = Sessions()
    cookie, session = sessions.start()
    assert sessions.find(cookie) == session
    sessions.end(session)
    assert sessions.find(cookie) is None
    assert Sessions().find(cookie) is None   # another server's secret


async def test_sign_out_ends_the_session_on_the_server(client):
    await sign_in(client)
    cookie = client.session.cookie_jar.filter_cookies(client.make_url("/admin/"))[COOKIE].value
    refused = await client.post("/admin/logout", headers=same_origin(client))
    assert refused.status == 401   # no CSRF token: a cross-site page cannot sign you out
    assert (await client.get("/admin/backends")).status == 200
    resp = await client.post("/admin/logout",
                             headers={"X-CSRF-Token": await csrf(client), **same_origin(client)})
    assert resp.status == 200
    assert resp.cookies[COOKIE].value == ""   # the browser drops it
    assert '"cookies"' in resp.headers["Clear-Site-Data"]
    # A copy of the old cookie is worthless now.
    replay = await client.get("/admin/backends", cookies={COOKIE: cookie})
    assert replay.status == 401
    assert (await client.get("/admin/console/session", cookies={COOKIE: cookie})).status == 401


async def test_reload_with_the_cookie_needs_the_csrf_token_and_the_same_origin(client):
    # This app serves no file: reload's own 400 shows that a call got past the checks.
    await sign_in(client)
    token = await csrf(client)
    for headers in ({}, {"X-CSRF-Token": "wrong"},
                    {"X-CSRF-Token": token, "Origin": "https://evil.example"},
                    {"X-CSRF-Token": token, "Sec-Fetch-Site": "cross-site"},
                    {"X-CSRF-Token": token, "Sec-Fetch-Site": "same-site"}):
        resp = await client.post("/admin/reload", headers=headers)
        assert resp.status == 403, headers
        body = await resp.json()
        assert body["error"]["code"] == "csrf_check_failed"
    ok = await client.post("/admin/reload", headers={"X-CSRF-Token": token,
                                                     "Sec-Fetch-Site": "same-origin",
                                                     **same_origin(client)})
    assert ok.status == 400   # past the checks: "not started from a config file"
    assert "config file" in (await ok.json())["error"]["message"]
    # Behind a proxy that rewrites Host, the page's host comes as X-Forwarded-Host.
    proxied = await client.post("/admin/reload", headers={
        "X-CSRF-Token": token, "Origin": "https://gateway.example",
        "X-Forwarded-Host": "gateway.example"})
    assert proxied.status == 400
    # The bearer key needs no token: no browser sends it by itself.
    client.session.cookie_jar.clear()
    assert (await client.post("/admin/reload", headers=bearer(ADMIN))).status == 400


async def test_sign_in_from_another_origin_or_with_a_huge_form_is_refused(client):
    resp = await client.post("/admin/login", data={"key": ADMIN}, allow_redirects=False,
                             headers={"Origin": "https://evil.example"})
    assert resp.status == 401 and COOKIE not in resp.cookies
    huge = await client.post("/admin/login", data={"key": ADMIN, "pad": "x" * 10_000},
                             allow_redirects=False)
    assert huge.status == 401 and COOKIE not in huge.cookies


async def test_without_an_admin_key_there_is_no_console(aiohttp_client):
    config = replace(console_config(), server=ServerConfig())
    client = await aiohttp_client(create_app(config))
    for path in ("/admin/", "/admin/login", "/admin/static/console.js",
                 "/admin/console/session", "/admin/console/state"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    assert (await client.post("/admin/login", data={"key": ""})).status == 404


async def test_assets_come_from_the_package_with_the_same_headers(client):
    for name, kind in (("console.js", "text/javascript"), ("charts.js", "text/javascript"),
                       ("console.css", "text/css")):
        resp = await client.get(f"/admin/static/{name}")
        assert resp.status == 200 and resp.content_type == kind, name
        assert resp.headers["Content-Security-Policy"] == CSP
    for name in ("nope.js", "console.html", "..%2Fsession.py"):
        assert (await client.get(f"/admin/static/{name}")).status == 404


async def test_the_state_shows_pools_states_and_a_tail_without_secrets(client):
    await sign_in(client)
    for _ in range(3):
        resp = await client.post("/v1/chat/completions", json=ECHO_CHAT,
                                 headers={**bearer("sk-team-secret"), "X-Request-ID": "req-1"})
        assert resp.status == 200
    client.app[GATEWAY].states["b"].healthy = False
    client.app[GATEWAY].states["a"].ejected_until = time.monotonic() + 30
    state = await (await client.get("/admin/console/state")).json()
    assert state["models"] == [{"name": "m", "strategy": "weighted", "backends": ["a", "b"],
                                "fallbacks": []}]
    by_name = {b["name"]: b for b in state["backends"]}
    assert by_name["b"]["state"] == "down"
    assert by_name["a"]["state"] == "ejected" and 25 < by_name["a"]["ejected_for_s"] <= 30
    assert [line["request_id"] for line in state["tail"]] == ["req-1"] * 3
    assert {line["key"] for line in state["tail"]} == {"team"}
    assert state["keys"][0]["name"] == "team" and "key" not in state["keys"][0]
    text = await (await client.get("/admin/console/state")).text()
    assert "sk-team-secret" not in text and ADMIN not in text
    # The console's own calls are not in the tail.
    assert all(line.get("path", "/v1/").startswith("/v1/") for line in state["tail"])


def test_p50_interpolates_within_buckets_like_histogram_quantile():
    empty = [0.0] * len(BOUNDS)
    assert p50(empty) is None
    # 10 observations, all in the (0.1, 0.25] bucket: the median is half way through it.
    cumulative = [0, 0, 0, 0, *[10] * (len(BOUNDS) - 4)]
    assert math.isclose(p50(cumulative), 0.175)
    # All past the last finite bound: that bound.
    assert p50([0] * (len(BOUNDS) - 1) + [4]) == BOUNDS[-2]


def test_history_keeps_rates_per_interval_and_is_bounded():
    history = History(step_s=5, points=3)
    ttft = [0.0] * len(BOUNDS)
    history.add(100.0, {"a": Counts(10, 0, list(ttft))})
    assert not history.points   # the first reading is only a baseline
    hot = [0, 0, 0, 0, *[4] * (len(BOUNDS) - 4)]   # all in (0.1, 0.25]
    history.add(105.0, {"a": Counts(20, 5, hot)})
    series = history.to_dict(["a", "new"])
    assert series["backends"]["a"] == {"rps": [2.0], "error_rate": [0.5],
                                       "ttft_p50_s": [0.175]}
    assert series["backends"]["new"] == {"rps": [0.0], "error_rate": [None],
                                         "ttft_p50_s": [None]}
    for i in range(5):   # idle intervals; the ring keeps the last 3
        history.add(110.0 + 5 * i, {"a": Counts(20, 5, hot)})
    assert len(history.points) == 3
    assert history.to_dict(["a"])["backends"]["a"]["rps"] == [0.0, 0.0, 0.0]


async def test_history_reads_the_metrics_counters_with_no_work_per_request(client):
    for body in [{**ECHO_CHAT, "stream": True}] * 4 + [{**ECHO_CHAT, "model": "nope"}]:
        resp = await client.post("/v1/chat/completions", json=body,
                                 headers=bearer("sk-team-secret"))
        await resp.read()   # a stream is measured once it has been sent
    counts = read_counts(client.app[GATEWAY].metrics)
    assert set(counts) <= {"a", "b"}   # the 404 had no backend
    assert sum(c.requests for c in counts.values()) == 4
    assert sum(c.ttft[-1] for c in counts.values()) == 4   # every stream's first token


def test_workers_share_one_secret_and_one_set_of_sessions(tmp_path):
    run = RunDir(str(tmp_path))
    first, second = Sessions(run), Sessions(run)
    cookie, session = first.start()
    assert second.find(cookie) == session
    assert first.csrf_token(session) == second.csrf_token(session)
    second.end(session)
    assert first.find(cookie) is None


@pytest.fixture
def served(tmp_path):
    started: list[Served] = []
    yield lambda text, **kw: started.append(start(tmp_path, text, **kw)) or started[-1]
    for s in started:
        s.stop()


async def test_under_workers_the_console_shows_the_whole_server(served):
    gw = served(f"server: {{admin_key: {ADMIN}}}\n"
                "backends:\n  a: {kind: echo, models: [m]}\n", workers=2)
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        resp = await browser.post(gw.base + "/admin/login", data={"key": ADMIN},
                                  allow_redirects=False)
        assert resp.status == 303

        async def state() -> dict:
            # A connection of its own each time: any worker may answer.
            async with aiohttp.ClientSession(
                    cookie_jar=jar, connector=aiohttp.TCPConnector(force_close=True)) as s:
                async with s.get(gw.base + "/admin/console/state") as r:
                    assert r.status == 200   # the session is every worker's
                    return await r.json()
        await state()   # a console is open now: the workers publish
        ids = [f"w-{i}" for i in range(12)]
        for request_id in ids:
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(force_close=True)) as s:
                async with s.post(gw.base + "/v1/chat/completions", json=ECHO_CHAT,
                                  headers={"X-Request-ID": request_id}) as r:
                    assert r.status == 200

        async def whole() -> bool:
            found = await state()
            return (found["workers"] == 2 and
                    {line["request_id"] for line in found["tail"]} >= set(ids))
        assert await eventually(whole, timeout=10, interval=0.2)
        # Both workers answered some of them (else the test proves nothing about merging).
        assert len([p for p, n in gw.per_worker("gateway_requests_total").items() if n]) == 2

        async def counted() -> float:
            # The history is the server's: one worker samples every worker's counters.
            # A point every STEP_S (5 s): all 12 requests are in within a few of them.
            rates = (await state())["history"]["backends"]["a"]["rps"]
            total = sum(rates) * STEP_S
            return total if total > 10.5 else 0.0
        assert 10.5 < await eventually(counted, timeout=25, interval=1.0) < 13.5


async def test_another_workers_figures_are_added_to_this_ones(client, tmp_path):
    """What `others()` reads is added up: in flight and queue summed, the longest
    ejection and cooldown of any worker, tails merged by time; a stale file ignored."""
    share = client.app[CONSOLE].share = WorkerShare(RunDir(str(tmp_path)))
    await sign_in(client)
    gateway = client.app[GATEWAY]
    gateway.states["a"].in_flight = 2
    now = time.time()
    other = {"in_flight": {"a": 3, "b": 1}, "ejected_until": {"b": now + 20},
             "cooling_until": {"a": now + 7}, "waiting": 4,
             "tail": [{"time": now - 100, "request_id": "from-the-other-worker"}]}
    (tmp_path / "console-workers" / "999999.json").write_bytes(orjson.dumps(other))
    stale = tmp_path / "console-workers" / "999998.json"
    stale.write_bytes(orjson.dumps({**other, "waiting": 1000}))
    os.utime(stale, (now - FRESH_S - 5, now - FRESH_S - 5))
    await client.post("/v1/chat/completions", json=ECHO_CHAT,
                      headers={**bearer("sk-team-secret"), "X-Request-ID": "mine"})
    state = await (await client.get("/admin/console/state")).json()
    assert state["workers"] == 2
    by_name = {b["name"]: b for b in state["backends"]}
    assert by_name["a"]["in_flight"] == 5 and by_name["b"]["in_flight"] == 1
    assert by_name["b"]["state"] == "ejected" and 15 < by_name["b"]["ejected_for_s"] <= 20
    assert 5 < by_name["a"]["cooling_for_s"] <= 7 and by_name["a"]["state"] == "up"
    assert state["queue"]["waiting"] == 4
    assert [line["request_id"] for line in state["tail"]] == ["from-the-other-worker", "mine"]
    assert share.is_open()   # the page asked: every worker publishes now
    gateway.states["a"].in_flight = 0


async def test_a_request_held_waiting_shows_in_the_queue_rows_and_its_keys_figures(
        aiohttp_client, aiohttp_server, tmp_path):
    """A backend at its max_concurrency: the next request waits. The state shows it per
    model and class with a growing oldest wait, and its key's /admin/keys figures (in
    flight, queued, tokens, budget left); once it runs the row is gone."""
    gate = Holding(usage=(4, 6))
    upstream = await aiohttp_server(gate.app())
    metered = ApiKey("metered", "sk-metered", priority="batch",
                     budget=Budget(tokens_per_day=1000, tokens_per_month=50_000))
    config = make_config(
        backend("x", "vllm", f"http://127.0.0.1:{upstream.port}/v1", models=("m",),
                max_concurrency=1),
        server=ServerConfig(admin_key=ADMIN), auth_keys=(metered, ApiKey("team", "sk-team")),
        state=StateConfig(sqlite=str(tmp_path / "state.sqlite")))
    client = await aiohttp_client(create_app(config))
    await sign_in(client)

    async def state() -> dict:
        resp = await client.get("/admin/console/state")
        assert resp.status == 200
        return await resp.json()
    empty = await state()
    assert empty["queue"]["rows"] == [] and empty["queue"]["waiting"] == 0
    first = asyncio.create_task(client.post("/v1/chat/completions", json=ECHO_CHAT,
                                            headers=bearer("sk-team")))
    assert await eventually(lambda: len(gate.arrived) == 1, timeout=3)
    waiting = asyncio.create_task(client.post("/v1/chat/completions", json=ECHO_CHAT,
                                              headers=bearer("sk-metered")))
    queue = client.app[GATEWAY].dispatcher.queue
    assert await eventually(lambda: queue.waiting == 1, timeout=3)
    await asyncio.sleep(0.3)
    held = await state()
    [row] = held["queue"]["rows"]
    assert row["model"] == "m" and row["priority"] == "batch" and row["waiting"] == 1
    assert 0.3 <= row["oldest_wait_s"] < 5
    assert held["queue"]["waiting"] == 1 and held["queue"]["cold"] == 0
    keys = {k["name"]: k for k in held["keys"]}
    assert keys["metered"]["queued"] == 1 and keys["metered"]["in_flight"] == 0
    assert keys["metered"]["priority"] == "batch"
    assert keys["metered"]["budget"] == {"tokens_per_day": 1000, "tokens_per_month": 50_000,
                                         "left_day": 1000, "left_month": 50_000}
    assert keys["team"]["in_flight"] == 1 and keys["team"]["queued"] == 0
    assert keys["team"]["budget"] is None
    # The console's keys are GET /admin/keys' entries.
    admin = await (await client.get("/admin/keys")).json()
    assert admin["keys"] == held["keys"]
    later = (await state())["queue"]["rows"][0]["oldest_wait_s"]
    assert later >= row["oldest_wait_s"]

    gate.release_all()
    assert (await asyncio.wait_for(first, 5)).status == 200
    assert (await asyncio.wait_for(waiting, 5)).status == 200
    done = await state()
    assert done["queue"]["rows"] == [] and done["queue"]["waiting"] == 0
    metered_after = next(k for k in done["keys"] if k["name"] == "metered")
    assert metered_after["queued"] == 0 and metered_after["tokens"]["day"] == 10
    assert metered_after["budget"]["left_day"] == 990


def test_the_rows_count_by_model_and_class_with_promotion_and_the_oldest_wait():
    """`Scheduler.rows` on waiters put in directly: per model and class, the class the
    one a waiter has been promoted to, the oldest wait the earliest arrival's."""
    scheduler = Scheduler()
    now = time.monotonic()
    key = KeyState("k")

    def put(model: str, cls: int, waited: float, promote_s: float = 30.0) -> None:
        scheduler._seq += 1
        scheduler._add(Waiter(Ticket(key, cls), scheduler._seq, now - waited, promote_s,
                              model, model, lambda: None))
    put("m", 2, 1.0)
    put("m", 2, 4.0)
    put("m", 0, 0.5)
    put("other", 1, 2.0)
    put("m", 2, 35.0)   # batch for 35 s with promote_after_s 30: standard now
    rows = {(m, c): (n, age) for m, c, n, age in scheduler.rows()}
    assert set(rows) == {("m", 0), ("m", 1), ("m", 2), ("other", 1)}
    assert rows[("m", 2)][0] == 2 and 4.0 <= rows[("m", 2)][1] < 5.0
    assert rows[("m", 1)][0] == 1 and 35.0 <= rows[("m", 1)][1] < 36.0
    assert rows[("m", 0)][0] == 1 and rows[("other", 1)][0] == 1
    assert [r[:2] for r in scheduler.rows()] == [("m", 0), ("m", 1), ("m", 2), ("other", 1)]
    assert sum(r[2] for r in scheduler.rows()) == scheduler.waiting == 5


async def test_other_workers_queue_rows_and_keys_queued_are_merged(client, tmp_path):
    """Under --workers: the queue's rows summed per model and class, the oldest wait the
    longest of any worker's (from the wall-clock arrival each publishes, so a file a
    second old is not a second short), each key's queued summed; a worker's waiters
    with no row (a cold pool's) are `cold`."""
    client.app[CONSOLE].share = WorkerShare(RunDir(str(tmp_path)))
    await sign_in(client)
    now = time.time()
    base = {"in_flight": {}, "ejected_until": {}, "cooling_until": {}, "tail": []}
    one = {**base, "waiting": 5, "queued": {"team": 2},
           "queue": [{"model": "m", "priority": "batch", "waiting": 2, "oldest_since": now - 12},
                     {"model": "m", "priority": "interactive", "waiting": 1,
                      "oldest_since": now - 1}]}
    two = {**base, "waiting": 3, "queued": {"team": 3},
           "queue": [{"model": "m", "priority": "batch", "waiting": 3, "oldest_since": now - 4}]}
    for name, figures in (("999997", one), ("999996", two)):
        (tmp_path / "console-workers" / f"{name}.json").write_bytes(orjson.dumps(figures))
    state = await (await client.get("/admin/console/state")).json()
    assert state["workers"] == 3
    queue = state["queue"]
    assert [(r["model"], r["priority"], r["waiting"]) for r in queue["rows"]] == [
        ("m", "interactive", 1), ("m", "batch", 5)]
    assert 12 <= queue["rows"][1]["oldest_wait_s"] < 14
    assert 1 <= queue["rows"][0]["oldest_wait_s"] < 3
    assert queue["waiting"] == 8 and queue["cold"] == 2
    [team] = state["keys"]
    assert team["name"] == "team" and team["queued"] == 5
