"""Fake model servers that report their own load in their kind's real format.

A `FakeEngine` is the one fake runtime (bench/fake_runtime) whose load pages are
rendered by `tests.engine_samples` from values a test changes while it runs:

    vllm, sglang, tgi   /metrics
    llamacpp            /metrics (`unsupported=("/metrics",)`: started without --metrics), /slots
    ollama              /api/ps
    localai             /metrics with API-call histograms only: the gateway must not ask

How the pages answer is the runtime's `pages_fault` switch ("ok", "hang", "500", "404",
"garbage"); `ttft_s` delays the first token (and a whole answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

from bench.fake_runtime import FakeRuntime
from tests import engine_samples as samples

LOAD_PATHS = {"vllm": ("/metrics",), "sglang": ("/metrics",), "tgi": ("/metrics",),
              "llamacpp": ("/metrics", "/slots"), "ollama": ("/api/ps",),
              "localai": ("/metrics",)}
LOCALAI_METRICS = """# HELP localai_api_call How many times an API call was made
# TYPE localai_api_call histogram
localai_api_call_bucket{method="POST",path="/v1/chat/completions",le="+Inf"} 3
localai_api_call_sum{method="POST",path="/v1/chat/completions"} 1.25
localai_api_call_count{method="POST",path="/v1/chat/completions"} 3
"""


@dataclass(eq=False)
class FakeEngine(FakeRuntime):
    """The scripted load; the rest is FakeRuntime's switches."""

    words: int = 3
    running: float = 0
    waiting: float = 0
    kv: float = 0.1                    # vLLM's and SGLang's KV usage (others have none)
    loaded: tuple[str, ...] = ()       # Ollama's /api/ps
    asleep: bool = False               # vLLM's sleep mode (engine_sleep_state awake 0)
    pages: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.pages = {path: partial(self.render, path) for path in LOAD_PATHS[self.kind]}

    def render(self, path: str) -> str:
        model = self.models[0]
        if self.kind == "vllm":
            return samples.vllm_metrics(self.running, self.waiting, self.kv, model=model,
                                        asleep=self.asleep)
        if self.kind == "sglang":
            return samples.sglang_metrics(self.running, self.waiting, self.kv, model=model)
        if self.kind == "tgi":
            return samples.tgi_metrics(queue=self.waiting, batch=self.running)
        if self.kind == "ollama":
            return samples.ollama_ps(*self.loaded)
        if self.kind == "localai":
            return LOCALAI_METRICS
        if path == "/slots":
            busy = int(self.running)
            return samples.llamacpp_slots(busy=busy, total=max(busy, 4))
        return samples.llamacpp_metrics(processing=self.running, deferred=self.waiting)
