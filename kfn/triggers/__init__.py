"""Triggers: event sources other than HTTP, each turning its events into asynchronous invocations
through the event store's `accept` (`base.EventSink`).

- `base`: the seam (`EventSink`, `TriggerSource`, `Triggers`);
- `schedule`: `spec.triggers[].schedule` (EventBridge rate/cron, five-field cron), with the tick
  records of `ticks` (SQLite locally, a JetStream key-value bucket on Kubernetes);
- `nats`: `spec.triggers[].nats` (a JetStream durable consumer, or a core NATS queue subscription);
- `leader`: one scheduler per work directory in local mode (a file lock; on Kubernetes
  `kfn.kube.lease.LeaseElection`);
- `registry`: the kinds (`kfn.core.triggerspec.TRIGGER_KINDS`) and their sources;
- `service`: the triggers of one process, wired (shared kinds, and the leader's).

Nothing here knows HTTP, instances or the store's backend: a source gets functions and a sink.
"""
