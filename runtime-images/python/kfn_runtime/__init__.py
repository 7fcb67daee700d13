"""kfn's Python runtime: the HTTP server inside every function instance (`python -m kfn_runtime`).

Standard library only, so cold starts stay short; prometheus_client is imported on the first
metrics scrape. See `runtime` for the lifecycle and `contract` for how the platform configures it.
"""
