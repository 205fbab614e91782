"""The HTTP surface: what clients call, and the one middleware every request passes.

    middleware.py  request id, error rendering, sending, the log line and metrics
    proxy.py       the model APIs of `gateway.endpoints`: route, dispatch, relay
    body.py        reading and checking a request body before anything goes upstream
    keys.py        the caller's key and its rate limits
    info.py        /v1/models, /health, /ready, /metrics
    admin.py       /admin/*: backend state, the active config, reloads
"""
