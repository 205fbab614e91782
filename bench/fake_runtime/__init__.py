"""The one fake OpenAI-compatible runtime, for the tests and the speed benchmark.

It answers as the real servers do (`formats`): chat and text completions and
embeddings in OpenAI's JSON; streams as SSE `chat.completion.chunk` (or
`text_completion`) events, a finish event, a usage event when
`stream_options.include_usage` is set, then `data: [DONE]`; `/v1/models`; and the
health path of its kind (vLLM, SGLang, TGI and llama.cpp `/health`, Ollama
`/api/tags`, LocalAI `/readyz`; LM Studio and hosted APIs are checked on
`/v1/models`). The other APIs have a row each in `apis`: Responses (stored, replayed,
streamed as named events), Anthropic Messages and count_tokens, the tokenizer,
rerank, score, audio and images, in their own `formats_*` modules; GET pages serve
a runtime's own load (`/metrics`, `/slots`, `/api/ps`). Switches make it slow,
failing or broken, for all its models or for one of them (`runtime`), and its
streams quirky (keep-alives, a split or unterminated `[DONE]`, `"usage": null`);
its counters say what it was sent and what it sent back.

It is also the load target of bench/speed.py, so it must cost far less CPU per
request than anything measured through it: a bare HTTP/1.1 protocol on asyncio,
not a web framework (`protocol`). Tests run it in their own event loop:

    server = await FakeRuntime(status=503, fail_times=1).start()   # 127.0.0.1, a free port

and the benchmark as a program (on uvloop; see `__main__`):

    python -m bench.fake_runtime --port 9001 --chunk-ms 20 [--switches JSON]
"""

from .runtime import Behaviour, FakeRuntime, FakeServer

__all__ = ["Behaviour", "FakeRuntime", "FakeServer"]
