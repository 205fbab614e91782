"""Responses the gateway keeps itself, for runtimes whose Responses API keeps no state.

llama-server's and Ollama's /v1/responses answer one request at a time: they store nothing,
so `previous_response_id`, `GET` and `DELETE /v1/responses/{id}` get the runtime's 400/404.
For a backend without the `stateful_responses` capability the gateway stores each response
made with `store` not false (the whole input it was made from, its output, the backend) and
answers those calls itself; a follow-up's input is the stored input, the stored output and
the new input, sent to any backend of the pool (the gateway holds the whole conversation).

    history    pure: input items, a response's output as input items, the expansion
    store      `Store`, the interface, and `MemoryStore` (no `state` section: lost on restart)
    sqlite     `SqliteStore`: `state.sqlite`, one server (every worker writes to it)
    redis      `RedisStore`: `state.redis`, shared by replicas
    keeper     `Conversations`: the store chosen by the config, `responses.ttl_s` and
               `responses.max_stored`; what the API layer calls

The HTTP side is gateway/api/conversations.py.
"""

from gateway.conversations.keeper import Conversations, StoreUnavailable, make_store

__all__ = ["Conversations", "StoreUnavailable", "make_store"]
