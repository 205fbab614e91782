"""Client keys, per-key models, rate limits, and the admin key."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from gateway.limits.auth import KeyRing, bearer_token, model_allowed, same_secret, visible_models
from gateway.config import ApiKey, ServerConfig
from gateway.errors import Unauthorized
from gateway.limits.buckets import Limiter, format_duration, usage_tokens
from gateway.typedefs import GATEWAY
from tests.conftest import CHAT, RUNTIME_ID, bearer, make_config, runtime_backend

TEAM_A = ApiKey(name="team-a", key="sk-team-a-0123456789", models=("*",))
NARROW = ApiKey(name="narrow", key="sk-narrow-9876543210", models=("qwen-*", "phi-4"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def keyed_gateway(start_runtime, gateway_client, *keys: ApiKey, **fake_kw):
    fake, server = await start_runtime(**fake_kw)
    cfg = make_config(runtime_backend("gpu-a", server, models={
        "llama": RUNTIME_ID, "qwen-7b": "qwen", "phi-4": "phi"}, api_key="sk-upstream"),
        auth_keys=keys)
    return fake, await gateway_client(cfg)


# --- pure logic ------------------------------------------------------------------

@pytest.mark.parametrize("header,token", [
    ("Bearer abc", "abc"), ("bearer abc ", "abc"), ("BEARER  abc", "abc"),
    (None, None), ("", None), ("Bearer", None), ("Bearer ", None), ("Basic abc", None),
    ("Bearerabc", None), ("abc", None),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_keyring_finds_exact_keys_only():
    ring = KeyRing([TEAM_A, NARROW])
    assert ring.find(TEAM_A.key) is TEAM_A
    assert ring.find(NARROW.key) is NARROW
    for wrong in ("", TEAM_A.key[:-1], TEAM_A.key + "x", TEAM_A.key.upper(), "\udcff"):
        assert ring.find(wrong) is None
    with pytest.raises(Unauthorized):
        ring.authenticate("Bearer " + TEAM_A.key[:-1])
    assert KeyRing([]).authenticate(None) is None      # auth off


def test_same_secret_survives_undecodable_bytes():
    assert same_secret("abc", "abc") and not same_secret("abc", "abd")
    assert not same_secret("\udcff\udcfe", "abc")       # aiohttp's surrogateescape'd bytes


def test_model_patterns():
    assert model_allowed(NARROW, "qwen-7b") and model_allowed(NARROW, "phi-4")
    assert not model_allowed(NARROW, "llama") and not model_allowed(NARROW, "phi-4-mini")
    assert not model_allowed(NARROW, "QWEN-7b")          # case-sensitive, like model names
    assert visible_models(NARROW, ["llama", "phi-4", "qwen-7b"]) == ["phi-4", "qwen-7b"]
    assert visible_models(None, ["llama"]) == ["llama"]


@pytest.mark.parametrize("seconds,text", [
    (0, "0s"), (0.0004, "1ms"), (0.02, "20ms"), (1, "1s"), (1.5, "1.5s"), (8.64, "8.64s"),
    (60, "1m0s"), (86.4, "1m26.4s"), (3723, "1h2m3s"),
])
def test_format_duration_like_openai(seconds, text):
    assert format_duration(seconds) == text


def test_usage_tokens():
    assert usage_tokens({"total_tokens": 12, "prompt_tokens": 7}) == 12
    assert usage_tokens({"prompt_tokens": 7, "completion_tokens": 5}) == 12
    assert usage_tokens({"prompt_tokens": True, "total_tokens": "9"}) == 0
    assert usage_tokens(None) == 0 and usage_tokens([]) == 0


def test_rpm_bucket_refills_continuously():
    clock = Clock()
    limiter = Limiter([ApiKey("k", "s", rpm=60)], clock=clock)
    for _ in range(60):
        assert limiter.admit("k") is None
    refusal = limiter.admit("k")
    assert refusal.limit == "rpm" and refusal.retry_after == pytest.approx(1.0)
    clock.now += 0.5
    assert limiter.admit("k") is not None
    clock.now += 0.5
    assert limiter.admit("k") is None                    # one per second comes back
    assert limiter.headers("k")["x-ratelimit-remaining-requests"] == "0"
    assert limiter.admit("nobody") is None               # unknown or unlimited keys pass


def test_tpm_is_charged_after_the_fact_and_admits_while_positive():
    clock = Clock()
    limiter = Limiter([ApiKey("k", "s", tpm=600)], clock=clock)
    assert limiter.admit("k") is None
    limiter.charge("k", {"total_tokens": 900})           # one big answer overdraws
    refusal = limiter.admit("k")
    assert refusal.limit == "tpm"
    assert refusal.retry_after == pytest.approx(30.0, abs=0.01)   # 300 owed at 10/s
    clock.now += 31
    assert limiter.admit("k") is None
    headers = limiter.headers("k")
    assert headers["x-ratelimit-limit-tokens"] == "600"
    assert headers["x-ratelimit-remaining-tokens"] == "10"
    assert headers["x-ratelimit-reset-tokens"] == "59s"
    assert "x-ratelimit-limit-requests" not in headers    # no rpm on this key


def test_apply_keeps_buckets_of_keys_whose_name_stays():
    clock = Clock()
    limiter = Limiter([ApiKey("a", "s1", rpm=2), ApiKey("b", "s2", rpm=2)], clock=clock)
    for name in ("a", "a", "b", "b"):
        assert limiter.admit(name) is None
    limiter.apply([ApiKey("a", "rotated-secret", rpm=2), ApiKey("c", "s2", rpm=2),
                   ApiKey("b2", "s3", rpm=4)])
    assert limiter.admit("a") is not None                 # same name: still used up
    assert limiter.admit("c") is None                     # new name: a full bucket
    assert limiter.admit("b") is None                     # removed: no limit any more
    limiter.apply([ApiKey("a", "s1", rpm=4)])             # a raised limit keeps what was used
    assert limiter.headers("a")["x-ratelimit-remaining-requests"] == "2"
    limiter.apply([ApiKey("a", "s1", rpm=1)])             # a lowered one caps what is left
    assert limiter.admit("a") is not None


# --- over HTTP -------------------------------------------------------------------------

async def test_no_auth_when_no_keys(start_runtime, gateway_client):
    _, client = await keyed_gateway(start_runtime, gateway_client)
    resp = await client.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 200
    assert not [h for h in resp.headers if h.lower().startswith("x-ratelimit")]


async def test_missing_malformed_and_wrong_keys_get_one_identical_401(start_runtime,
                                                                      gateway_client):
    fake, client = await keyed_gateway(start_runtime, gateway_client, TEAM_A)
    bodies = []
    for headers in ({}, {"Authorization": "Basic dGVhbS1hOng="},
                    {"Authorization": "Bearer"}, {"Authorization": TEAM_A.key},
                    bearer(TEAM_A.key[:-1]), bearer("sk-" + "x" * 200)):
        resp = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert resp.status == 401
        bodies.append(await resp.read())
        assert "x-ratelimit-limit-requests" not in resp.headers
    assert len(set(bodies)) == 1
    error = json.loads(bodies[0])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == "invalid_api_key"
    assert (await client.get("/v1/models")).status == 401
    assert fake.requests == []


async def test_model_not_allowed_is_403_and_models_are_filtered(start_runtime,
                                                                gateway_client):
    fake, client = await keyed_gateway(start_runtime, gateway_client, TEAM_A, NARROW)
    resp = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(NARROW))
    assert resp.status == 403
    error = (await resp.json())["error"]
    assert error["code"] == "model_not_allowed" and error["param"] == "model"
    # A name the key may not use is 403 whether or not it exists: nothing is revealed.
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-secret"},
                             headers=bearer(NARROW))
    assert resp.status == 403
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "qwen-7b"},
                             headers=bearer(NARROW))
    assert resp.status == 200 and fake.requests[-1]["model"] == "qwen"
    resp = await client.post("/v1/chat/completions", json={**CHAT, "model": "qwen-72b"},
                             headers=bearer(NARROW))
    assert resp.status == 404                         # allowed by the pattern, not served
    listing = await (await client.get("/v1/models", headers=bearer(NARROW))).json()
    assert [m["id"] for m in listing["data"]] == ["phi-4", "qwen-7b"]
    listing = await (await client.get("/v1/models", headers=bearer(TEAM_A))).json()
    assert [m["id"] for m in listing["data"]] == ["llama", "phi-4", "qwen-7b"]
    assert len(fake.requests) == 1


async def test_key_name_is_logged_and_measured_never_the_key(start_runtime, gateway_client,
                                                             caplog):
    caplog.set_level(logging.DEBUG)
    _, client = await keyed_gateway(start_runtime, gateway_client, TEAM_A)
    assert (await client.post("/v1/chat/completions", json=CHAT,
                              headers=bearer(TEAM_A))).status == 200
    assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"},
                              headers=bearer(TEAM_A))).status == 404
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "gateway.access"]
    assert [(line["key"], line["status"]) for line in lines] == [("team-a", 200),
                                                                 ("team-a", 404)]
    assert TEAM_A.key not in caplog.text
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_key_requests_total{key="team-a",model="llama",status="200"} 1.0' in metrics
    assert 'gateway_key_requests_total{key="team-a",model="",status="404"} 1.0' in metrics
    assert TEAM_A.key not in metrics


async def test_rpm_limit_answers_429_with_openai_headers(start_runtime, gateway_client):
    key = replace(TEAM_A, rpm=2)
    fake, client = await keyed_gateway(start_runtime, gateway_client, key)
    first = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    assert first.status == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    assert (await client.post("/v1/chat/completions", json=CHAT,
                              headers=bearer(key))).status == 200
    limited = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(key))
    assert limited.status == 429
    assert 28 <= int(limited.headers["Retry-After"]) <= 30   # one request per 30 s
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    error = (await limited.json())["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert len(fake.requests) == 2
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_rate_limited_total{key="team-a",limit="rpm"} 1.0' in metrics
    assert 'gateway_key_requests_total{key="team-a",model="",status="429"} 1.0' in metrics


@pytest.mark.parametrize("stream", [False, True])
async def test_tpm_is_charged_with_real_usage(start_runtime, gateway_client, stream):
    key = replace(TEAM_A, tpm=20)
    fake, client = await keyed_gateway(start_runtime, gateway_client, key)
    body = {**CHAT, "stream": stream}
    for _ in range(2):      # 20 -> 8 -> -4: the second is admitted while still positive
        resp = await client.post("/v1/chat/completions", json=body, headers=bearer(key))
        assert resp.status == 200
        assert resp.headers["x-ratelimit-limit-tokens"] == "20"     # streams carry them too
        await resp.read()
    limited = await client.post("/v1/chat/completions", json=body, headers=bearer(key))
    assert limited.status == 429
    assert limited.headers["x-ratelimit-limit-tokens"] == "20"
    assert limited.headers["x-ratelimit-remaining-tokens"] == "0"
    assert 12 <= int(limited.headers["Retry-After"]) <= 13    # 4 tokens owed at 1/3 per s
    assert len(fake.requests) == 2
    metrics = await (await client.get("/metrics")).text()
    assert 'gateway_rate_limited_total{key="team-a",limit="tpm"} 1.0' in metrics


async def test_limits_survive_a_reload_for_keys_whose_name_stays(start_runtime,
                                                                  gateway_client):
    key = replace(TEAM_A, rpm=1)
    _, client = await keyed_gateway(start_runtime, gateway_client, key)
    gateway = client.server.app[GATEWAY]
    assert (await client.post("/v1/chat/completions", json=CHAT,
                              headers=bearer(key))).status == 200
    rotated = replace(key, key="sk-rotated-key-000")
    gateway.apply(replace(gateway.config, auth_keys=(rotated,)))
    assert (await client.post("/v1/chat/completions", json=CHAT,
                              headers=bearer(key))).status == 401      # the old key is gone
    assert (await client.post("/v1/chat/completions", json=CHAT,
                              headers=bearer(rotated))).status == 429  # its bucket stayed
    renamed = replace(rotated, name="team-b")
    gateway.apply(replace(gateway.config, auth_keys=(renamed,)))
    assert (await client.post("/v1/chat/completions", json=CHAT,
                              headers=bearer(renamed))).status == 200


async def test_health_ready_and_metrics_need_no_client_key(start_runtime, gateway_client):
    _, client = await keyed_gateway(start_runtime, gateway_client, TEAM_A)
    for path in ("/health", "/ready", "/metrics"):
        assert (await client.get(path)).status == 200


# --- the admin API -------------------------------------------------------------------

async def admin_gateway(start_runtime, gateway_client, admin_key: str | None):
    _, server = await start_runtime()
    cfg = make_config(runtime_backend("gpu-a", server, models=["llama"]),
                      server=ServerConfig(admin_key=admin_key), auth_keys=(TEAM_A,))
    return await gateway_client(cfg)


async def test_admin_is_disabled_without_an_admin_key(start_runtime, gateway_client):
    client = await admin_gateway(start_runtime, gateway_client, None)
    for headers in ({}, bearer(TEAM_A), bearer("anything")):
        resp = await client.get("/admin/backends", headers=headers)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_admin_needs_the_admin_key(start_runtime, gateway_client):
    admin = "adm-0123456789abcdef"
    client = await admin_gateway(start_runtime, gateway_client, admin)
    for headers in ({}, bearer(admin[:-1]), bearer(admin + "0"), bearer(TEAM_A),
                    {"Authorization": admin}, {"Authorization": "Basic " + admin}):
        resp = await client.get("/admin/backends", headers=headers)
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "invalid_api_key"
    resp = await client.get("/admin/backends", headers=bearer(admin))
    assert resp.status == 200
    assert [b["name"] for b in (await resp.json())["backends"]] == ["gpu-a"]
    # The admin key is not a client key.
    assert (await client.post("/v1/chat/completions", json=CHAT,
                              headers=bearer(admin))).status == 401
