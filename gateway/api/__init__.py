"""The HTTP surface: what clients call, and the one middleware every request passes.

Its modules, one line each, are in ARCHITECTURE.md (`gateway/api/`).
"""
