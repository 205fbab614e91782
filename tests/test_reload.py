"""Editing gateway.yaml while it serves: no dropped request, bad edits refused."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from bench.procs import Proc, free_port
from gateway.app import create_app
from gateway.config import load_config
from gateway.typedefs import GATEWAY
from tests.conftest import eventually, samples, value

KEY = {"Authorization": "Bearer k"}   # ignored until an edit turns auth on
WORDS = " ".join(str(i) for i in range(12))


def yaml_text(backends: dict[str, int], strategy: str = "weighted", extra: str = "") -> str:
    lines = ["server: {admin_key: adm}", "backends:"]
    for name, weight in backends.items():
        lines += [f"  {name}:", "    kind: echo", f"    weight: {weight}", "    models: [m]"]
    lines += ["routes:", f"  m: {{strategy: {strategy}}}", extra]
    return "\n".join(lines) + "\n"


def write(path, text: str, atomic: bool) -> None:
    if atomic:   # what editors and ConfigMaps do: a new file renamed over the old one
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    else:
        path.write_text(text)


async def reloads(client, result: str) -> float:
    return value(await samples(client), "gateway_config_reloads_total", result=result)


async def wait_reloads(client, result: str, above: float, within: float = 5.0) -> None:
    async def counted() -> bool:
        return await reloads(client, result) > above
    assert await eventually(counted, within, 0.05), f"no {result} reload within {within} s"


MAX_LOOPS = 10_000   # requests per load task at most: ~100 s of a caller's 10 ms pace


async def test_twenty_edits_under_load_drop_nothing(tmp_path, aiohttp_client: AiohttpClient,
                                                     monkeypatch):
    monkeypatch.setenv("SET_KEY", "k")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml_text({"a": 1, "b": 1}))
    client = await aiohttp_client(create_app(load_config(str(path)), str(path)))
    stop = asyncio.Event()
    outcomes: collections.Counter[str] = collections.Counter()

    async def streamer() -> None:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
        for _ in range(MAX_LOOPS):   # bounded in count; `stop` ends it in time
            if stop.is_set():
                return
            resp = await client.post("/v1/chat/completions", json=body, headers=KEY)
            raw = (await resp.read()).decode()
            events = [l[6:] for l in raw.split("\n") if l.startswith("data: ")]
            text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "")
                           for e in events[:-1] if e != "[DONE]")
            ok = resp.status == 200 and events[-1] == "[DONE]" and text == WORDS
            outcomes["stream ok" if ok else f"stream bad {resp.status} {raw[-200:]}"] += 1

    async def caller() -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(MAX_LOOPS):
            if stop.is_set():
                return
            resp = await client.post("/v1/chat/completions", json=body, headers=KEY)
            await resp.read()   # an answer left unread would leave its socket to the GC
            outcomes["call ok" if resp.status == 200 else f"call bad {resp.status}"] += 1
            await asyncio.sleep(0.01)   # a fixed pace

    tasks = [asyncio.create_task(streamer()) for _ in range(50)]
    tasks += [asyncio.create_task(caller()) for _ in range(3)]
    edits = [
        ({"a": 1, "b": 1, "c": 1}, "weighted", ""),                # add a backend
        ({"a": 1, "c": 1}, "weighted", ""),                        # remove one
        ({"a": 1, "c": 9}, "weighted", ""),                        # change weights
        ({"a": 1, "c": 9}, "least_busy", ""),                      # switch a strategy
        ({"a": 2, "c": 1}, "prefix_affinity", ""),
        ({"a": 2, "c": 1, "d": 1}, "session_affinity", ""),
        ({"a": 1, "d": 1}, "weighted", "auth: {keys: [{name: x, key: '${SET_KEY}'}]}"),
        ({"a": 1, "d": 1}, "weighted", ""),
    ]
    edits = (edits * 3)[:18]
    try:
        for i, (backends, strategy, extra) in enumerate(edits):
            before = await reloads(client, "ok")
            write(path, yaml_text(backends, strategy, extra), atomic=i % 2 == 0)
            await wait_reloads(client, "ok", before)
            assert set(client.app[GATEWAY].states) == set(backends)
            if backends == {"a": 1, "c": 9} and strategy == "weighted":
                hits = collections.Counter()
                for _ in range(20):
                    r = await client.post("/v1/chat/completions", headers=KEY, json={
                        "model": "m", "messages": [{"role": "user", "content": "x"}]})
                    await r.read()
                    hits[r.headers["X-Gateway-Backend"]] += 1
                assert hits["c"] >= 16, hits
        good = path.read_text()
        errors = await reloads(client, "error")
        path.write_text(good.replace("kind: echo", "kind: [echo", 1))      # YAML error
        await wait_reloads(client, "error", errors)
        cfg = await (await client.get("/admin/config",
                                      headers={"Authorization": "Bearer adm"})).json()
        assert "line" in cfg["last_error"]["problems"][0]
        errors = await reloads(client, "error")
        path.write_text(good.replace("kind: echo", "kind: echo\n    api_key: ${NOPE_UNSET}", 1))
        await wait_reloads(client, "error", errors)
        cfg = await (await client.get("/admin/config",
                                      headers={"Authorization": "Bearer adm"})).json()
        assert any("NOPE_UNSET" in p for p in cfg["last_error"]["problems"])
        assert set(client.app[GATEWAY].states) == set(edits[-1][0])   # the last good one stays
        await asyncio.sleep(0.5)   # a fixed wait: the load runs on under the last good config
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert {k for k in outcomes if "bad" in k} == set(), outcomes
    assert outcomes["stream ok"] >= 50


async def test_admin_reload_reports_restart_needed(tmp_path, aiohttp_client: AiohttpClient):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml_text({"a": 1}))
    client = await aiohttp_client(create_app(load_config(str(path)), str(path)))
    path.write_text(yaml_text({"a": 1}).replace("{admin_key: adm}",
                                                "{admin_key: adm, port: 9999}"))
    resp = await client.post("/admin/reload", headers={"Authorization": "Bearer adm"})
    body = await resp.json()
    assert resp.status == 200 and body["restart_required"] == ["server.port"]
    path.write_text("backends: {a: {kind: nope}}\nserver: {admin_key: adm}\n")
    resp = await client.post("/admin/reload", headers={"Authorization": "Bearer adm"})
    body = await resp.json()
    assert resp.status == 400
    assert any(p.startswith("backends.a.kind:") for p in body["problems"])


@pytest.fixture
def serve(tmp_path):
    """Start `gateway serve` on a config text: (process, port, config path); stopped after."""
    with contextlib.ExitStack() as procs:
        def start(text: str, *args: str) -> tuple[Proc, int, Path]:
            path = tmp_path / "gateway.yaml"
            path.write_text(text)
            port = free_port()
            proc = procs.enter_context(Proc("gateway", [
                sys.executable, "-m", "gateway", "serve", "--config", path, "--port", str(port),
                *args], tmp_path / "gateway.log"))
            proc.start().wait_ready(f"http://127.0.0.1:{port}/ready", 15)
            return proc, port, path
        yield start


async def test_sighup_reloads(serve):
    proc, port, path = serve(yaml_text({"a": 1}))
    path.write_text(yaml_text({"a": 1, "zz": 1}).replace("models: [m]", "models: [m, n]"))
    proc.send_signal(signal.SIGHUP)
    async with aiohttp.ClientSession() as session:
        async def models() -> list[str]:
            async with session.get(f"http://127.0.0.1:{port}/v1/models") as resp:
                return [m["id"] for m in (await resp.json())["data"]]

        async def reloaded() -> bool:
            return await models() == ["m", "n"]
        assert await eventually(reloaded, timeout=10, interval=0.05), await models()


async def test_sigterm_drains_streams_then_exits_0(serve):
    text = yaml_text({"a": 1}).replace("{admin_key: adm}", "{admin_key: adm, drain_s: 1}")
    proc, port, _ = serve(text)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    short = " ".join(["w"] * 10)     # 10 words x 20 ms: finishes within the drain time
    long = " ".join(["w"] * 200)     # 4 s: cut by the drain deadline
    async with aiohttp.ClientSession() as session:
        opened: list[int] = []   # one entry per stream whose answer has begun

        async def stream(words):
            resp = await session.post(url, json={"model": "m", "stream": True, "messages": [
                {"role": "user", "content": words}]})
            opened.append(resp.status)
            return (await resp.read()).decode()
        tasks = [asyncio.create_task(stream(short)), asyncio.create_task(stream(long))]
        assert await eventually(lambda: len(opened) == 2, timeout=5), "the streams did not open"
        proc.send_signal(signal.SIGTERM)
        done_short, done_long = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert done_short.endswith("data: [DONE]\n\n")
    assert "[DONE]" not in done_long and '"code":"shutting_down"' in done_long
    assert proc.wait(10) == 0
