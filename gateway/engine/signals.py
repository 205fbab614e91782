"""What each runtime kind says about its own load, where to ask, and how to read the answer.

Pure: no I/O. The scraper GETs each `ScrapeSpec.path` of a backend's kind (relative to the
server root, like the health path), hands the answer to `parse`, merges the readings of one
round with `combine`, and asks `saturated` whether the backend should get new requests.

A value the kind does not expose is None, never a made-up 0. Several series for one backend
(vLLM data-parallel ranks, several served models) are summed for running and waiting; the
largest is taken for KV usage. Names were looked up in the runtimes' code:

- vLLM 0.33 `vllm/v1/metrics/loggers.py` (PrometheusStatLogger; labels `model_name`, `engine`
  = data-parallel rank): `vllm:num_requests_running`, `vllm:num_requests_waiting`,
  `vllm:kv_cache_usage_perc` (0..1), `vllm:engine_sleep_state{sleep_state="awake"}` (1 awake,
  0 asleep: read as `loaded`). Old name `vllm:gpu_cache_usage_perc` (deprecated in 0.9, no
  longer emitted by 0.33) is read when the new one is absent. The `_sum` and `_count` of the
  histograms `vllm:e2e_request_latency_seconds` and `vllm:request_queue_time_seconds`
  (arrival to end, and the wait in the queue, of every finished request): their
  differences give the time in the batch (`finished`, `latency_s`, `queued_s`).
- SGLang 0.5 `python/sglang/srt/observability/metrics_collector.py` (earlier
  `python/sglang/srt/metrics/collector.py`; SchedulerMetricsCollector, labels `model_name`,
  `engine_type`, `tp_rank`, `pp_rank`, `moe_ep_rank`, optional `dp_rank`, `priority`):
  `sglang:num_running_reqs`, `sglang:num_queue_reqs`, `sglang:token_usage` (0..1, the fullest
  of its KV pools); without it `sglang:num_used_tokens` / `sglang:max_total_num_tokens`.
  With priority scheduling the total is the series with `priority=""` and the others are a
  per-priority breakdown, so those are skipped; tp/pp/ep ranks repeat one count.
- llama.cpp `tools/server/server-task.cpp` (server_task_result_metrics::to_metrics, needs
  `--metrics`): `llamacpp:requests_processing` (slots busy), `llamacpp:requests_deferred`
  (requests waiting for a slot). No KV gauge: `llamacpp:kv_cache_usage_ratio` was removed
  (ggml-org/llama.cpp#13660) and is read only from old builds. `/slots`
  (`tools/server/server-context.cpp`, server_slot::to_json; on by default, off with
  `--no-slots`): a JSON list of slots, busy ones with `"is_processing": true` (builds before
  late 2024: `"state"` non-zero).
- TGI `backends/v3/src/queue.rs` and `backends/v3/src/backend.rs` (described in
  `router/src/server.rs`, served on the API port): `tgi_queue_size` (waiting),
  `tgi_batch_current_size` (running). No KV gauge. Gauges appear only once first set.
- Ollama `server/routes.go` (PsHandler) and `api/types.go` (ProcessResponse): `/api/ps` lists
  the loaded models by name (`types/model/name.go` DisplayShortest: `model:tag`, with
  `namespace/` or `host/namespace/` only when not the defaults). No load counts.
- LocalAI, LM Studio, hosted OpenAI-compatible APIs and echo expose no load: nothing is scraped.

    ParseError(ValueError)   an answer that gives no reading; `reason` is a fixed label
                             (status, unsupported, decode, format) for a counter
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from .promtext import PromTextError, Series, first, peak, select, total

Models = tuple[str, ...] | None


@dataclass(frozen=True)
class EngineLoad:
    """One reading of a backend's own load. None = not exposed by this kind (or this answer).

    `loaded`: Ollama has one of the asked-for models in memory (`loaded_models`: which ones,
    spelled as asked; with none asked, every loaded model in Ollama's spelling); vLLM is
    awake (False: put to sleep, weights off the GPU). None for the other kinds.
    """

    running: float | None
    waiting: float | None
    kv_usage: float | None
    loaded: bool | None = None
    loaded_models: frozenset[str] | None = None
    # Since the runtime started (vLLM's e2e-latency and queue-time histograms): requests
    # finished, their seconds from arrival to the end, and of that the seconds they waited.
    # Their differences between two readings give the time a request takes in the batch.
    finished: float | None = None
    latency_s: float | None = None
    queued_s: float | None = None
    # How many requests the runtime runs at once, where it says (llama.cpp's /slots).
    slots: float | None = None


class ParseError(ValueError):
    """No reading in this answer; `reason` is one of REASONS, a fixed label to count it by."""

    REASONS = ("status", "unsupported", "decode", "format")

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


Parser = Callable[[bytes, Models], EngineLoad]


@dataclass(frozen=True)
class ScrapeSpec:
    path: str
    parse: Parser


def parse_vllm(body: bytes, models: Models = None) -> EngineLoad:
    found = _select(body, _VLLM)
    awake = [v for labels, v in found.get("vllm:engine_sleep_state", ())
             if labels.get("sleep_state") == "awake"]
    return EngineLoad(
        running=total(found.get("vllm:num_requests_running", ())),
        waiting=total(found.get("vllm:num_requests_waiting", ())),
        kv_usage=peak(first(found, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")),
        loaded=any(v >= 1 for v in awake) if awake else None,
        finished=total(found.get("vllm:e2e_request_latency_seconds_count", ())),
        latency_s=total(found.get("vllm:e2e_request_latency_seconds_sum", ())),
        queued_s=total(found.get("vllm:request_queue_time_seconds_sum", ())),
    )


def parse_sglang(body: bytes, models: Models = None) -> EngineLoad:
    found = {name: [s for s in series if not s[0].get("priority")]
             for name, series in _select(body, _SGLANG).items()}
    kv = peak(found.get("sglang:token_usage", ()))
    if kv is None:
        kv = _used_ratio(found.get("sglang:num_used_tokens", ()),
                         found.get("sglang:max_total_num_tokens", ()))
    return EngineLoad(
        running=total(found.get("sglang:num_running_reqs", ()), _SGLANG_REPLICAS),
        waiting=total(found.get("sglang:num_queue_reqs", ()), _SGLANG_REPLICAS),
        kv_usage=kv,
    )


def parse_llamacpp_metrics(body: bytes, models: Models = None) -> EngineLoad:
    found = _select(body, _LLAMACPP)
    return EngineLoad(
        running=total(found.get("llamacpp:requests_processing", ())),
        waiting=total(found.get("llamacpp:requests_deferred", ())),
        kv_usage=peak(found.get("llamacpp:kv_cache_usage_ratio", ())),
    )


def parse_llamacpp_slots(body: bytes, models: Models = None) -> EngineLoad:
    slots = _json(body)
    if not isinstance(slots, list) or not all(isinstance(s, dict) for s in slots):
        raise ParseError("format", "/slots is not a list of slot objects")
    return EngineLoad(running=float(sum(_slot_busy(s) for s in slots)), waiting=None,
                      kv_usage=None, slots=float(len(slots)))


def parse_tgi(body: bytes, models: Models = None) -> EngineLoad:
    found = _select(body, _TGI)
    return EngineLoad(
        running=total(found.get("tgi_batch_current_size", ())),
        waiting=total(found.get("tgi_queue_size", ())),
        kv_usage=None,
    )


def parse_ollama_ps(body: bytes, models: Models = None) -> EngineLoad:
    answer = _json(body)
    entries = answer.get("models") if isinstance(answer, dict) else None
    if not isinstance(entries, list):
        raise ParseError("format", "/api/ps has no 'models' list")
    names = {ollama_name(e[key]) for e in entries if isinstance(e, dict)
             for key in ("name", "model") if isinstance(e.get(key), str)}
    wanted = models if models is not None else tuple(sorted(names))
    loaded = frozenset(m for m in wanted if ollama_name(m) in names)
    return EngineLoad(running=None, waiting=None, kv_usage=None,
                      loaded=bool(loaded), loaded_models=loaded)


def ollama_name(name: str) -> str:
    """Ollama's own short form of a model name, for comparing: `llama3.1` is
    `registry.ollama.ai/library/llama3.1:latest` is `llama3.1:latest`; case does not count."""
    short = name.strip().lower()
    for default in ("registry.ollama.ai/", "library/"):
        short = short.removeprefix(default)
    if ":" not in short.rsplit("/", 1)[-1]:
        short += ":latest"
    return short


_VLLM = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
         "vllm:gpu_cache_usage_perc", "vllm:engine_sleep_state",
         "vllm:e2e_request_latency_seconds_count", "vllm:e2e_request_latency_seconds_sum",
         "vllm:request_queue_time_seconds_sum")
_SGLANG = ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage",
           "sglang:num_used_tokens", "sglang:max_total_num_tokens")
_SGLANG_REPLICAS = frozenset({"tp_rank", "pp_rank", "moe_ep_rank"})
_LLAMACPP = ("llamacpp:requests_processing", "llamacpp:requests_deferred",
             "llamacpp:kv_cache_usage_ratio")
_TGI = ("tgi_queue_size", "tgi_batch_current_size")

SPECS: Mapping[str, tuple[ScrapeSpec, ...]] = MappingProxyType({
    "vllm": (ScrapeSpec("/metrics", parse_vllm),),
    "sglang": (ScrapeSpec("/metrics", parse_sglang),),
    "llamacpp": (ScrapeSpec("/metrics", parse_llamacpp_metrics),
                 ScrapeSpec("/slots", parse_llamacpp_slots)),
    "tgi": (ScrapeSpec("/metrics", parse_tgi),),
    "ollama": (ScrapeSpec("/api/ps", parse_ollama_ps),),
    "localai": (), "lmstudio": (), "openai": (), "echo": (),
})


def specs_for(kind: str) -> tuple[ScrapeSpec, ...]:
    """What to scrape for a kind; () for kinds that expose no load (and unknown ones)."""
    return SPECS.get(kind, ())


def parse(kind: str, path: str, status: int, body: bytes, models: Models = None) -> EngineLoad:
    """The reading in one scrape answer, or ParseError. KeyError for a path that is not one of
    the kind's specs (a caller's bug, not a runtime's).

    `models`: the backend's runtime model ids (None = not configured), for Ollama's `loaded`.
    Prometheus kinds read every series whatever model it names: all models of one server
    share its slots and its KV cache."""
    spec = next((s for s in specs_for(kind) if s.path == path), None)
    if spec is None:
        raise KeyError(f"{kind} has no scrape path {path!r}")
    if status in (404, 405, 501):
        # llama-server without --metrics answers 501, a runtime without the route 404.
        raise ParseError("unsupported", f"{path} answered {status}: not served")
    if not 200 <= status < 300:
        raise ParseError("status", f"{path} answered {status}")
    return spec.parse(body, models)


def combine(loads: Iterable[EngineLoad]) -> EngineLoad | None:
    """One reading from the answers of one round (llama.cpp's /metrics and /slots).

    Both count the same busy slots a moment apart: the larger is the safer one to route on.
    None when there is no reading at all.
    """
    loads = list(loads)
    if not loads:
        return None
    flags = [x.loaded for x in loads if x.loaded is not None]
    sets = [x.loaded_models for x in loads if x.loaded_models is not None]
    return EngineLoad(
        running=_largest(x.running for x in loads),
        waiting=_largest(x.waiting for x in loads),
        kv_usage=_largest(x.kv_usage for x in loads),
        loaded=any(flags) if flags else None,
        loaded_models=frozenset().union(*sets) if sets else None,
        finished=_largest(x.finished for x in loads),
        latency_s=_largest(x.latency_s for x in loads),
        queued_s=_largest(x.queued_s for x in loads),
        slots=_largest(x.slots for x in loads),
    )


def saturated(load: EngineLoad, max_queue: float | None, max_kv: float | None) -> bool:
    """Past `max_queue` waiting requests or `max_kv` KV usage (strictly greater). A value the
    reading lacks never saturates, nor does a bound of None."""
    return ((load.waiting is not None and max_queue is not None and load.waiting > max_queue)
            or (load.kv_usage is not None and max_kv is not None and load.kv_usage > max_kv))


def _select(body: bytes, names: Iterable[str]) -> dict[str, list[Series]]:
    try:
        return select(body, names)
    except PromTextError as exc:
        raise ParseError(exc.reason, str(exc)) from None


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except UnicodeDecodeError as exc:
        raise ParseError("decode", f"not UTF-8: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise ParseError("format", f"not JSON: {' '.join(str(exc).split())[:200]}") from None


def _slot_busy(slot: Mapping[str, Any]) -> bool:
    busy = slot.get("is_processing")
    if isinstance(busy, bool):
        return busy
    state = slot.get("state")
    if isinstance(state, int) and not isinstance(state, bool):
        return state != 0
    raise ParseError("format", "a slot has neither 'is_processing' nor 'state'")


def _used_ratio(used: list[Series], capacity: list[Series]) -> float | None:
    sizes = {frozenset(labels.items()): value for labels, value in capacity if value > 0}
    ratios = [value / sizes[key] for labels, value in used
              if (key := frozenset(labels.items())) in sizes]
    return max(ratios) if ratios else None


def _largest(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None
