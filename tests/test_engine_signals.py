"""The engine-load parsers on each runtime's own answer format (tests/engine_samples.py)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from gateway.engine import (
    SPECS,
    EngineLoad,
    ParseError,
    combine,
    ollama_name,
    parse,
    saturated,
    specs_for,
)
from gateway.engine.promtext import select
from gateway.config.kinds import KINDS
from tests import engine_samples as samples


def load(kind: str, path: str, text: str, models=None) -> EngineLoad:
    return parse(kind, path, 200, text.encode(), models)


# --- the table ---------------------------------------------------------------------------

def test_every_kind_has_an_entry_and_paths_are_relative_to_the_root():
    assert set(SPECS) == set(KINDS)
    for specs in SPECS.values():
        assert all(s.path.startswith("/") and not s.path.startswith("/v1") for s in specs)


@pytest.mark.parametrize("kind, paths", [
    ("vllm", ["/metrics"]), ("sglang", ["/metrics"]), ("tgi", ["/metrics"]),
    ("llamacpp", ["/metrics", "/slots"]), ("ollama", ["/api/ps"]),
    ("localai", []), ("lmstudio", []), ("openai", []), ("echo", []), ("no-such-kind", []),
])
def test_what_each_kind_scrapes(kind, paths):
    assert [s.path for s in specs_for(kind)] == paths


# --- vLLM ----------------------------------------------------------------------------------

def test_vllm_two_data_parallel_ranks_and_two_models_sum_counts_and_take_the_fullest_cache():
    text = samples.vllm_metrics(running=[3, 1], waiting=[4, 0], kv=[0.25, 0.75],
                                ranks=2, models=["llama", "llama-lora"])
    assert load("vllm", "/metrics", text) == EngineLoad(
        running=8.0, waiting=8.0, kv_usage=0.75, loaded=True)


def test_vllm_single_engine():
    got = load("vllm", "/metrics", samples.vllm_metrics(running=2, waiting=5, kv=0.4))
    assert (got.running, got.waiting, got.kv_usage) == (2.0, 5.0, 0.4)


def test_vllm_old_names_give_the_kv_usage_and_no_sleep_state():
    text = samples.vllm_metrics(running=1, waiting=9, kv=0.93, old_names=True)
    assert "vllm:kv_cache_usage_perc" not in text
    assert load("vllm", "/metrics", text) == EngineLoad(1.0, 9.0, 0.93, loaded=None)


def test_vllm_new_kv_name_wins_when_both_are_there():
    # vLLM 0.9-0.10 emitted both names; the new one is the one kept up to date.
    text = (samples.vllm_metrics(kv=0.5)
            + 'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.99\n')
    assert load("vllm", "/metrics", text).kv_usage == 0.5


def test_vllm_asleep_engine_is_not_loaded():
    assert load("vllm", "/metrics", samples.vllm_metrics(asleep=True)).loaded is False


def test_vllm_waiting_by_reason_is_not_added_to_waiting():
    text = samples.vllm_metrics(waiting=6)
    assert "vllm:num_requests_waiting_by_reason" in text
    assert load("vllm", "/metrics", text).waiting == 6.0


def test_vllm_without_the_gauges_reads_none_not_zero():
    text = "\n".join(line for line in samples.vllm_metrics().splitlines()
                     if "cache_usage" not in line and "num_requests_waiting" not in line) + "\n"
    got = load("vllm", "/metrics", text)
    assert got.running == 2.0 and got.waiting is None and got.kv_usage is None


def test_nan_and_negative_values_are_no_reading():
    text = ('vllm:num_requests_running{engine="0",model_name="m"} NaN\n'
            'vllm:num_requests_waiting{engine="0",model_name="m"} -1\n'
            'vllm:kv_cache_usage_perc{engine="0",model_name="m"} +Inf\n')
    assert load("vllm", "/metrics", text) == EngineLoad(None, None, None)


# --- SGLang --------------------------------------------------------------------------------

def test_sglang_single_rank():
    got = load("sglang", "/metrics", samples.sglang_metrics(running=4, waiting=2, token_usage=0.6))
    assert got == EngineLoad(4.0, 2.0, 0.6)


def test_sglang_data_parallel_ranks_are_summed():
    text = samples.sglang_metrics(running=[2, 3], waiting=[1, 5], token_usage=[0.2, 0.7], dp=2)
    assert load("sglang", "/metrics", text) == EngineLoad(5.0, 6.0, 0.7)


def test_sglang_every_tensor_rank_reporting_counts_each_group_once():
    text = samples.sglang_metrics(running=[2, 3], waiting=[1, 5], dp=2, tp=4, every_tp_rank=True)
    assert text.count("sglang:num_running_reqs{") == 8
    assert load("sglang", "/metrics", text) == EngineLoad(5.0, 6.0, 0.5)


def test_sglang_priority_breakdown_is_not_counted_twice():
    text = samples.sglang_metrics(running=3, waiting=7, priorities={0: (1, 4), 5: (2, 3)})
    assert 'priority="5"' in text
    assert load("sglang", "/metrics", text) == EngineLoad(3.0, 7.0, 0.5)


def test_sglang_kv_from_token_counts_when_the_ratio_gauge_is_absent():
    text = samples.sglang_metrics(token_usage=[0.25, 0.5], dp=2, max_total_num_tokens=8000)
    text = "\n".join(line for line in text.splitlines() if "token_usage" not in line) + "\n"
    assert load("sglang", "/metrics", text).kv_usage == pytest.approx(0.5)


def test_sglang_without_any_kv_gauge():
    assert load("sglang", "/metrics", samples.sglang_metrics(token_usage=None)).kv_usage is None


# --- llama.cpp -----------------------------------------------------------------------------

def test_llamacpp_metrics_have_no_kv_gauge():
    got = load("llamacpp", "/metrics", samples.llamacpp_metrics(processing=2, deferred=3))
    assert got == EngineLoad(2.0, 3.0, None)


def test_llamacpp_old_builds_kv_ratio_is_read():
    text = samples.llamacpp_metrics(processing=1, deferred=0, kv_cache_usage_ratio=0.37)
    assert load("llamacpp", "/metrics", text).kv_usage == pytest.approx(0.37)


@pytest.mark.parametrize("legacy", [False, True])
def test_llamacpp_slots_count_the_busy_ones(legacy):
    got = load("llamacpp", "/slots", samples.llamacpp_slots(busy=3, total=4, legacy=legacy))
    assert got == EngineLoad(3.0, None, None, slots=4.0)


def test_llamacpp_metrics_and_slots_combine():
    metrics = load("llamacpp", "/metrics", samples.llamacpp_metrics(processing=1, deferred=2))
    slots = load("llamacpp", "/slots", samples.llamacpp_slots(busy=2, total=2))
    assert combine([metrics, slots]) == EngineLoad(2.0, 2.0, None, slots=2.0)
    assert combine([slots]) == slots
    assert combine([]) is None


@pytest.mark.parametrize("body", [b"{}", b'[{"id": 0}]', b"[1, 2]", b'[{"is_processing": "yes"}]'])
def test_llamacpp_slots_of_another_shape_are_a_format_error(body):
    with pytest.raises(ParseError) as info:
        parse("llamacpp", "/slots", 200, body)
    assert info.value.reason == "format"


def test_llamacpp_without_metrics_flag_is_unsupported():
    body = json.dumps({"error": {"code": 501, "message": "This server does not support metrics "
                       "endpoint. Start it with `--metrics`", "type": "not_supported_error"}})
    with pytest.raises(ParseError) as info:
        parse("llamacpp", "/metrics", 501, body.encode())
    assert info.value.reason == "unsupported"


# --- TGI -----------------------------------------------------------------------------------

def test_tgi_queue_and_batch():
    assert load("tgi", "/metrics", samples.tgi_metrics(queue=6, batch=4)) == EngineLoad(4.0, 6.0, None)


def test_fresh_tgi_has_no_gauges_yet_which_is_no_reading_and_no_error():
    assert load("tgi", "/metrics", samples.tgi_metrics(fresh=True)) == EngineLoad(None, None, None)


# --- Ollama --------------------------------------------------------------------------------

def test_ollama_loaded_models_match_in_ollama_spelling():
    body = samples.ollama_ps("llama3.1:8b", "qwen2.5:latest", "hf.co/bartowski/Phi-4:Q4_K_M")
    got = load("ollama", "/api/ps", body,
               models=("llama3.1:8b", "Qwen2.5", "registry.ollama.ai/library/mistral",
                       "hf.co/bartowski/phi-4:q4_k_m"))
    assert got.loaded is True
    assert got.loaded_models == {"llama3.1:8b", "Qwen2.5", "hf.co/bartowski/phi-4:q4_k_m"}
    assert (got.running, got.waiting, got.kv_usage) == (None, None, None)


def test_ollama_model_not_loaded():
    got = load("ollama", "/api/ps", samples.ollama_ps("mistral:latest"), models=("llama3.1:8b",))
    assert got == EngineLoad(None, None, None, loaded=False, loaded_models=frozenset())


def test_ollama_without_configured_models_reports_whatever_is_loaded():
    assert load("ollama", "/api/ps", samples.ollama_ps()).loaded is False
    got = load("ollama", "/api/ps", samples.ollama_ps("llama3.1"))
    assert got.loaded is True and got.loaded_models == {"llama3.1:latest"}


@pytest.mark.parametrize("name, short", [
    ("llama3.1", "llama3.1:latest"), ("Llama3.1:8B", "llama3.1:8b"),
    ("registry.ollama.ai/library/llama3.1:8b", "llama3.1:8b"),
    ("library/llama3.1", "llama3.1:latest"), ("jmorgan/llama3", "jmorgan/llama3:latest"),
    ("localhost:5000/team/model", "localhost:5000/team/model:latest"),
])
def test_ollama_name(name, short):
    assert ollama_name(name) == short


@pytest.mark.parametrize("body", [b"[]", b'{"models": {}}', b'{"other": []}'])
def test_ollama_ps_of_another_shape_is_a_format_error(body):
    with pytest.raises(ParseError) as info:
        parse("ollama", "/api/ps", 200, body)
    assert info.value.reason == "format"


# --- answers that give no reading -----------------------------------------------------------

PATHS = [(kind, spec.path) for kind, specs in SPECS.items() for spec in specs]
GARBAGE = [b"<html><body>502 Bad Gateway</body></html>", b"\xff\xfe\x00garbage", b"[" * 100_000,
           b'vllm:num_requests_running{engine="0" 3\n', b"{not json", b"\x00\x01\x02"]


@pytest.mark.parametrize("kind, path", PATHS)
@pytest.mark.parametrize("body", GARBAGE)
def test_garbage_is_a_parse_error_with_a_known_reason(kind, path, body):
    with pytest.raises(ParseError) as info:
        parse(kind, path, 200, body)
    assert info.value.reason in ParseError.REASONS


@pytest.mark.parametrize("kind, path", PATHS)
@pytest.mark.parametrize("status, reason", [(404, "unsupported"), (500, "status"),
                                            (503, "status"), (302, "status")])
def test_non_2xx_is_a_parse_error(kind, path, status, reason):
    with pytest.raises(ParseError) as info:
        parse(kind, path, status, b"")
    assert info.value.reason == reason


def test_a_path_the_kind_does_not_scrape_is_a_caller_bug():
    with pytest.raises(KeyError):
        parse("vllm", "/slots", 200, b"[]")
    with pytest.raises(KeyError):
        parse("echo", "/metrics", 200, b"")


@settings(max_examples=150, deadline=None)
@given(kind_path=st.sampled_from(PATHS),
       body=st.one_of(st.binary(max_size=300),
                      st.lists(st.sampled_from([
                          'vllm:num_requests_running{engine="0"} 1', "sglang:token_usage 0.5",
                          "llamacpp:requests_deferred 2", "tgi_queue_size x", "# TYPE a gauge",
                          '{"models": [{"name": 3}]}', '[{"is_processing": true}]', "}{",
                          'tgi_queue_size{a="\\"} 1', "sglang:num_queue_reqs{a=1} 2",
                      ]), max_size=6).map(lambda lines: "\n".join(lines).encode())))
def test_any_answer_gives_a_reading_or_a_parse_error(kind_path, body):
    kind, path = kind_path
    try:
        got = parse(kind, path, 200, body)
    except ParseError as exc:
        assert exc.reason in ParseError.REASONS
    else:
        assert isinstance(got, EngineLoad)


# --- the line selection before the parser ----------------------------------------------------

@pytest.mark.parametrize("text", [
    samples.vllm_metrics(ranks=2, models=["a", "b"]), samples.sglang_metrics(dp=2, tp=2,
                                                                             every_tp_rank=True),
    samples.llamacpp_metrics(kv_cache_usage_ratio=0.1), samples.tgi_metrics(queue=2, batch=1),
])
def test_selected_series_are_those_the_full_parse_finds(text):
    # Gauges only: for a counter the parser renames samples after its TYPE line.
    everything = [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text)
                  if family.type == "gauge" for s in family.samples]
    gauges = {name for name, _, _ in everything}
    assert len(gauges) >= 3
    assert select(text.encode(), gauges) == {
        name: [(labels, value) for n, labels, value in everything if n == name]
        for name in gauges if any(n == name for n, _, _ in everything)}


# --- saturation ------------------------------------------------------------------------------

@pytest.mark.parametrize("reading, expected", [
    (EngineLoad(0, 9, None), True),        # queue past 8
    (EngineLoad(0, 8, None), False),       # at the bound is not past it
    (EngineLoad(0, None, 0.95), True),     # KV past 0.9
    (EngineLoad(0, None, 0.9), False),
    (EngineLoad(50, 2, 0.5), False),       # running never saturates
    (EngineLoad(None, None, None), False),  # nothing known: never saturated
])
def test_saturated(reading, expected):
    assert saturated(reading, max_queue=8, max_kv=0.9) is expected


def test_no_bound_never_saturates():
    assert saturated(EngineLoad(0, 1000, 1.0), max_queue=None, max_kv=None) is False
