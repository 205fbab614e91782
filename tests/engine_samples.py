"""What runtimes answer on their load endpoints, rendered in each one's own current format,
with scripted values: for the parser tests, and for fake runtimes that serve `/metrics`,
`/slots` or `/api/ps`.

- vLLM (0.33, one API server): rendered by prometheus-client, as vLLM's own are, with labels
  `model_name` and `engine` (the data-parallel rank). `old_names=True` renders a V0-era
  server (no `engine` label, `vllm:gpu_cache_usage_perc`).
- SGLang: as prometheus-client's multiprocess collector renders them (SGLang always runs it:
  no `_created` samples), with the scheduler's rank labels.
- llama.cpp: llama-server's hand-written exposition (C++ stream formatting of doubles) and its
  `/slots` JSON; `llamacpp_timings` is the `timings` object in its answers.
- TGI: the Rust metrics-exporter-prometheus layout (a blank line after each family).
- Ollama: `/api/ps` as Go's encoding/json writes it.

A value given as a number is what every series reports (each rank of each model); a sequence
gives one value per data-parallel rank.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Iterable, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

PerRank = float | Sequence[float]
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)


def _rank_values(value: PerRank, ranks: int) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * ranks
    values = [float(v) for v in value]
    if len(values) != ranks:
        raise ValueError(f"{len(values)} values for {ranks} ranks")
    return values


class _Families:
    """A collector that yields prepared families, rendered by prometheus-client itself."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


def _render(families: Iterable[Metric]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def vllm_metrics(running: PerRank = 2, waiting: PerRank = 5, kv: PerRank = 0.4,
                 model: str = "m", ranks: int = 1, models: Sequence[str] | None = None,
                 old_names: bool = False, asleep: bool = False) -> str:
    """vLLM's /metrics: `ranks` data-parallel engines for each of `models` (default: model)."""
    names = list(models or [model])
    values = {key: _rank_values(v, ranks) for key, v in
              (("running", running), ("waiting", waiting), ("kv", kv))}
    labels = ["model_name"] if old_names else ["model_name", "engine"]
    series = [([name] if old_names else [name, str(rank)], rank)
              for name in names for rank in range(1 if old_names else ranks)]

    def gauge(metric: str, doc: str, key: str | None, extra: float = 0.0) -> GaugeMetricFamily:
        family = GaugeMetricFamily(metric, doc, labels=labels)
        for label_values, rank in series:
            family.add_metric(label_values, values[key][rank] if key else extra)
        return family

    families: list[Metric] = [
        gauge("vllm:num_requests_running", "Number of requests in model execution batches.",
              "running"),
        gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
              "waiting"),
    ]
    if old_names:
        families += [
            gauge("vllm:num_requests_swapped", "Number of requests swapped to CPU.", None),
            gauge("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent usage.",
                  "kv"),
            gauge("vllm:cpu_cache_usage_perc", "CPU KV-cache usage. 1 means 100 percent usage.",
                  None),
        ]
    else:
        families += [_vllm_waiting_by_reason(series, values["waiting"]),
                     _vllm_sleep_state(series, asleep),
                     gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                           "kv")]
    families += _vllm_counters_and_histograms(series, labels)
    return _render(families)


def _vllm_waiting_by_reason(series, waiting: list[float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "vllm:num_requests_waiting_by_reason",
        "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for "
        "scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV "
        "transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
        labels=["model_name", "engine", "reason"])
    for label_values, rank in series:
        family.add_metric(label_values + ["capacity"], waiting[rank])
        family.add_metric(label_values + ["deferred"], 0.0)
    return family


def _vllm_sleep_state(series, asleep: bool) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        "vllm:engine_sleep_state",
        "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is "
        "awake; weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2.",
        labels=["model_name", "engine", "sleep_state"])
    states = {"awake": 0.0 if asleep else 1.0, "weights_offloaded": 1.0 if asleep else 0.0,
              "discard_all": 0.0}
    for label_values, _ in series:
        for state, value in states.items():
            family.add_metric(label_values + [state], value)
    return family


def _vllm_counters_and_histograms(series, labels: list[str]) -> list[Metric]:
    queries = CounterMetricFamily("vllm:prefix_cache_queries",
                                  "Prefix cache queries, in terms of number of queried tokens.",
                                  labels=labels)
    ttft = HistogramMetricFamily("vllm:time_to_first_token_seconds",
                                 "Histogram of time to first token in seconds.", labels=labels)
    for label_values, _ in series:
        queries.add_metric(label_values, 4096.0, created=1767225600.0)
        buckets = [(repr(b), float(min(12, int(b * 40)))) for b in TTFT_BUCKETS]
        ttft.add_metric(label_values, buckets + [("+Inf", 12.0)], sum_value=1.75)
    return [queries, ttft]


def sglang_metrics(running: PerRank = 1, waiting: PerRank = 3, token_usage: PerRank | None = 0.5,
                   model: str = "m", dp: int = 1, tp: int = 1, every_tp_rank: bool = False,
                   priorities: dict[int, tuple[float, float]] | None = None,
                   max_total_num_tokens: float | None = None) -> str:
    """SGLang's /metrics (`--enable-metrics`) with `dp` data-parallel ranks of `tp` tensor
    ranks each. Only TP rank 0 reports, unless `every_tp_rank`
    (`--enable-metrics-for-all-schedulers`). `priorities` adds the per-priority breakdown
    {priority: (running, waiting)} of priority scheduling. `max_total_num_tokens` adds the
    absolute token gauges (used = token_usage x capacity); `token_usage=None` leaves out the
    ratio gauge."""
    values = {"running": _rank_values(running, dp), "waiting": _rank_values(waiting, dp),
              "usage": _rank_values(token_usage if token_usage is not None else 0.0, dp)}
    label_sets = []
    for dp_rank in range(dp):
        for tp_rank in range(tp if every_tp_rank else 1):
            labels = {"model_name": model, "engine_type": "unified",
                      "tp_rank": str(dp_rank * tp + tp_rank), "pp_rank": "0", "moe_ep_rank": "0"}
            if dp > 1:
                labels["dp_rank"] = str(dp_rank)
            if priorities is not None:
                labels["priority"] = ""
            label_sets.append((dict(sorted(labels.items())), dp_rank))

    def gauge(metric: str, doc: str, pick) -> GaugeMetricFamily:
        family = GaugeMetricFamily(metric, doc, labels=list(label_sets[0][0]))
        for labels, dp_rank in label_sets:
            family.add_metric(list(labels.values()), pick(dp_rank))
        return family

    running_f = gauge("sglang:num_running_reqs", "The number of running requests.",
                      lambda r: values["running"][r])
    waiting_f = gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.",
                      lambda r: values["waiting"][r])
    for priority, (p_running, p_waiting) in (priorities or {}).items():
        for family, value in ((running_f, p_running), (waiting_f, p_waiting)):
            for labels, _ in label_sets:
                family.add_metric(list({**labels, "priority": str(priority)}.values()), value)
    families: list[Metric] = [
        running_f, waiting_f,
        gauge("sglang:num_grammar_queue_reqs",
              "The number of requests in the grammar waiting queue.", lambda r: 0.0),
        gauge("sglang:gen_throughput", "The generation throughput (token/s).", lambda r: 812.5),
        gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", lambda r: 0.25),
    ]
    if token_usage is not None:
        families.append(gauge("sglang:token_usage", "The token usage.",
                              lambda r: values["usage"][r]))
    if max_total_num_tokens is not None:
        families += [
            gauge("sglang:num_used_tokens", "The number of used tokens.",
                  lambda r: round(values["usage"][r] * max_total_num_tokens)),
            gauge("sglang:max_total_num_tokens",
                  "Maximum total number of tokens in the KV cache pool.",
                  lambda r: max_total_num_tokens),
        ]
    prompt = CounterMetricFamily("sglang:prompt_tokens", "Number of prefill tokens processed.",
                                 labels=["model_name"])
    prompt.add_metric([model], 230794.0)
    return _render(families + [prompt])


def _cpp(value: float) -> str:
    """A double as `std::stringstream << double` writes it (printf %g, precision 6)."""
    return "%g" % value


def llamacpp_metrics(processing: float = 1, deferred: float = 0,
                     kv_cache_usage_ratio: float | None = None) -> str:
    """llama-server's /metrics (`--metrics`). `kv_cache_usage_ratio` renders the gauge builds
    before ggml-org/llama.cpp#13660 had (with `kv_cache_tokens`)."""
    counters = [
        ("prompt_tokens_total", "Number of prompt tokens processed, excluding cached tokens", 143),
        ("prompt_tokens_cached_total", "Number of prompt tokens reused from the cache", 512),
        ("prompt_seconds_total", "Total time spent processing prompts", 8.168),
        ("tokens_predicted_total", "Number of generation tokens processed", 673),
        ("tokens_predicted_seconds_total", "Total time spent generating tokens", 29.567),
        ("n_decode_total", "Total number of llama_decode() calls, excluding speculative "
                           "decoding and multimodal decoding", 702),
        ("n_tokens_max", "Largest observed sequence length (prompt + generation)", 1187),
        ("spec_decode_num_draft_tokens_total", "Speculative: Total draft tokens generated", 0),
        ("spec_decode_num_accepted_tokens_total",
         "Speculative: Total draft tokens accepted by the target model", 0),
        ("spec_decode_num_drafts_total",
         "Speculative: Total speculative decoding verification steps", 0),
    ]
    gauges = [
        ("prompt_tokens_seconds", "Average prompt throughput in tokens/s", 17.5077),
        ("predicted_tokens_seconds", "Average generation throughput in tokens/s", 22.7619),
        ("requests_processing", "Number of requests processing", processing),
        ("requests_deferred", "Number of requests deferred", deferred),
        ("n_busy_slots_per_decode", "Average number of busy slots per llama_decode() call",
         1.33333),
    ]
    if kv_cache_usage_ratio is not None:
        gauges += [("kv_cache_usage_ratio", "KV-cache usage. 1 means 100 percent usage.",
                    kv_cache_usage_ratio),
                   ("kv_cache_tokens", "KV-cache tokens.", round(kv_cache_usage_ratio * 4096))]
    out = []
    for kind, items in (("counter", counters), ("gauge", gauges)):
        for name, doc, value in items:
            out.append(f"# HELP llamacpp:{name} {doc}\n# TYPE llamacpp:{name} {kind}\n"
                       f"llamacpp:{name} {_cpp(value)}\n")
    return "".join(out)


def llamacpp_timings(cache_n: int = 0, prompt_n: int = 12, predicted_n: int = 8,
                     prompt_ms: float = 45.2, predicted_ms: float = 160.0) -> dict:
    """The `timings` object of a llama-server answer (server_slot_stats::to_json): `cache_n`
    prompt tokens reused from the slot's cache, `prompt_n` evaluated anew."""
    return {
        "cache_n": cache_n,
        "prompt_n": prompt_n, "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": 1e3 * prompt_n / prompt_ms if prompt_ms else 0.0,
        "predicted_n": predicted_n, "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / predicted_n if predicted_n else 0.0,
        "predicted_per_second": 1e3 * predicted_n / predicted_ms if predicted_ms else 0.0,
    }


def llamacpp_slots(busy: int = 1, total: int = 2, n_ctx: int = 1024, legacy: bool = False) -> str:
    """llama-server's /slots: `total` slots (`-np`, 4 when not given), the first `busy` of them
    processing, the next idle one with its last task's fields, as a slot that served before
    shows them. `n_ctx` is per slot (`-c` / slots). `legacy` renders builds before
    `is_processing` (a numeric `state`, 0 = idle)."""
    if not 0 <= busy <= total:
        raise ValueError("busy must be within 0..total")
    return json.dumps([_slot(i, i < busy, i <= busy, n_ctx, legacy) for i in range(total)])


def _slot(i: int, busy: bool, served: bool, n_ctx: int, legacy: bool) -> dict:
    slot: dict = {"id": i, "n_ctx": n_ctx, "speculative": False}
    if legacy:
        slot["state"] = 1 if busy else 0
    else:
        slot["is_processing"] = busy
    if served:
        slot.update({
            "id_task": 26 + i, "n_prompt_tokens": 159 if busy else 433,
            "n_prompt_tokens_processed": 5 if busy else 0,
            "n_prompt_tokens_cache": 129 if busy else 0,
            "params": {"seed": 4294967295, "temperature": 0.800000011920929, "top_k": 40,
                       "top_p": 0.949999988079071, "max_tokens": 300, "n_predict": 300,
                       "stream": False, "chat_format": "Content-only",
                       "samplers": ["penalties", "dry", "top_n_sigma", "top_k", "typ_p",
                                    "top_p", "min_p", "xtc", "temperature"]},
            "next_token": [{"has_next_token": busy, "has_new_line": False, "n_remain": -1,
                            "n_decoded": 7 if busy else 0}],
        })
    return slot


def _rust(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def tgi_metrics(queue: float = 0, batch: float = 0, fresh: bool = False) -> str:
    """TGI's /metrics. `fresh`: a router that has served nothing yet, which renders neither
    gauge (metrics-exporter-prometheus renders a metric once it was first recorded)."""
    blocks = [("tgi_batch_max_total_tokens", "gauge", None, [("", 16000)])]
    if not fresh:
        blocks += [
            ("tgi_queue_size", "gauge", "Current queue size", [("", queue)]),
            ("tgi_batch_current_size", "gauge", "Current batch size", [("", batch)]),
            ("tgi_batch_current_max_tokens", "gauge", "Maximum tokens for the current batch",
             [("", 1024 * batch)]),
            ("tgi_request_count", "counter", "Total number of requests", [("", 42)]),
            ("tgi_batch_inference_count", "counter",
             "Inference calls per method (prefill or decode)",
             [('{method="prefill"}', 40), ('{method="decode"}', 3120)]),
            ("tgi_request_skipped_tokens", "summary", "Speculated tokens per request",
             [('{quantile="0"}', 0), ('{quantile="0.5"}', 0), ('{quantile="0.9"}', 0),
              ('{quantile="1"}', 0), ("_sum", 0), ("_count", 42)]),
        ]
    out = []
    for name, kind, doc, samples in blocks:
        if doc:
            out.append(f"# HELP {name} {doc}\n")
        out.append(f"# TYPE {name} {kind}\n")
        for suffix, value in samples:
            out.append(f"{name}{suffix} {_rust(value)}\n")
        out.append("\n")
    return "".join(out)


def ollama_ps(*names: str) -> str:
    """Ollama's /api/ps with `names` loaded (as Ollama shows them, e.g. `llama3.1:8b`)."""
    now = datetime(2026, 12, 1, 10, 15, 30, 123456, tzinfo=timezone(timedelta(hours=1)))
    models = [{
        "name": name, "model": name, "size": 5137025024,
        "digest": "2ae6f6dd7a3dd734790bbbf58b8909a606e0e7e97e94b7604e0aa7ae4490e6d8",
        "details": {"parent_model": "", "format": "gguf", "family": "llama",
                    "families": ["llama"], "parameter_size": "8.0B",
                    "quantization_level": "Q4_K_M"},
        "expires_at": (now + timedelta(minutes=4 - i)).isoformat(timespec="microseconds"),
        "size_vram": 5137025024, "context_length": 4096,
    } for i, name in enumerate(names)]
    return json.dumps({"models": models}, separators=(",", ":"))
