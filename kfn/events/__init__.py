"""Asynchronous invocations: a durable store (SQLite locally, NATS JetStream on Kubernetes) and
the engine that delivers its events to functions with Lambda's retry policy (see store.py and
delivery.py). Nothing here knows HTTP or instances: the engine invokes through a callable."""
