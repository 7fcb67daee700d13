"""A NATS trigger cannot subscribe to what kfn itself, or NATS, sends on the gateway's connection:
kfn's event store subjects (every function's stored events, dead letters and ids, of every
namespace), NATS's own API and system subjects (`$JS.>`, `$SYS.>`) and request replies
(`_INBOX.>`). Before, a function in one namespace with `subject: kfn.async.>` (or `>`) got every
other function's asynchronous events, key-protected ones included, as its own invocations."""
from __future__ import annotations

import pytest

from kfn.core.functions import InvalidFunction
from kfn.events import jetstream_layout
from tests.support.functions import make_function


@pytest.mark.parametrize("subject", [
    "kfn.async.>", "kfn.async.team.secret", "kfn.dlq.>", "kfn.ids.team.secret.*", "kfn.>", ">", "*.async.>",
    "*.*.team.secret", "$JS.API.>", "$SYS.>", "_INBOX.>", "_INBOX.abc"])
def test_a_trigger_cannot_subscribe_to_kfns_or_natss_own_subjects(subject: str) -> None:
    with pytest.raises(InvalidFunction, match=r"spec\.triggers\[0\]\.nats\.subject"):
        make_function("spy", namespace="evil", triggers=[{"nats": {"subject": subject}}])


@pytest.mark.parametrize("subject", ["orders.created", "orders.>", "orders.*.eu", "kfnx.orders", "team.kfn.x"])
def test_a_trigger_may_subscribe_to_an_application_subject(subject: str) -> None:
    assert make_function(triggers=[{"nats": {"subject": subject}}]).spec.triggers[0].nats.subject == subject


def test_every_subject_of_the_jetstream_event_store_is_reserved() -> None:
    prefixes = [getattr(jetstream_layout, name) for name in dir(jetstream_layout) if name.endswith("_PREFIX")]
    assert jetstream_layout.SUBJECT_PREFIX in prefixes
    for prefix in prefixes:
        with pytest.raises(InvalidFunction):
            make_function(triggers=[{"nats": {"subject": f"{prefix}.default.hello"}}])
