"""spec.async and spec.triggers: Lambda's bounds, exact field errors, and the CRD saying the same."""
from __future__ import annotations

from typing import Any

import celpy
import jsonschema
import pytest

from kfn.core import crd
from kfn.core.asyncspec import AsyncSpec
from kfn.core.functions import parse_function
from tests.support.functions import errors_of, function_manifest


def test_async_settings_default_to_lambdas() -> None:
    settings = parse_function(function_manifest()).spec.async_
    assert (settings.maxRetryAttempts, settings.maximumEventAgeSeconds) == (2, 21600)
    assert (settings.onSuccess, settings.onFailure) == (None, None)


def test_async_settings_are_read_from_the_async_key() -> None:
    spec = parse_function(function_manifest(**{"async": {"maxRetryAttempts": 0, "maximumEventAgeSeconds": 60,
                                                "onFailure": {"function": "audit.ops"}}})).spec
    assert spec.async_ == AsyncSpec(maxRetryAttempts=0, maximumEventAgeSeconds=60,
                                    onFailure={"function": "audit.ops"})  # type: ignore[arg-type]


@pytest.mark.parametrize("settings, error", [
    ({"maxRetryAttempts": 3}, "spec.async.maxRetryAttempts: must be <= 2 (got 3)"),
    ({"maxRetryAttempts": -1}, "spec.async.maxRetryAttempts: must be >= 0 (got -1)"),
    ({"maximumEventAgeSeconds": 59}, "spec.async.maximumEventAgeSeconds: must be >= 60 (got 59)"),
    ({"maximumEventAgeSeconds": 21601}, "spec.async.maximumEventAgeSeconds: must be <= 21600 (got 21601)"),
    ({"onSuccess": {}}, "spec.async.onSuccess: must set exactly one of function or url"),
    ({"onFailure": {"function": "a", "url": "http://x"}},
     "spec.async.onFailure: must set exactly one of function or url"),
    ({"onFailure": {"url": "ftp://x"}}, "spec.async.onFailure.url: must be an http:// or https:// URL (got 'ftp://x')"),
    ({"onSuccess": {"function": "Bad_Name"}},
     "spec.async.onSuccess.function: must be a function name, NAME or NAME.NAMESPACE (got 'Bad_Name')"),
    ({"retries": 1}, "spec.async.retries: is not a known field"),
])
def test_bad_async_settings_are_reported_by_field(settings: dict[str, Any], error: str) -> None:
    assert errors_of(function_manifest(**{"async": settings})) == [error]


def test_triggers_are_a_schedule_or_a_nats_subject() -> None:
    triggers = parse_function(function_manifest(triggers=[{"schedule": "rate(5 minutes)"},
                                                 {"nats": {"subject": "orders.created"}}])).spec.triggers
    assert [t.kind for t in triggers] == ["schedule", "nats"]


@pytest.mark.parametrize("trigger, error", [
    ({}, "spec.triggers[0]: must set exactly one of schedule, nats"),
    ({"schedule": "rate(1 hour)", "nats": {"subject": "a"}},
     "spec.triggers[0]: must set exactly one of schedule, nats"),
    ({"schedule": "rate(1 hours)"},
     "spec.triggers[0].schedule: a rate of 1 takes the singular unit, e.g. rate(1 hour) (got 'rate(1 hours)')"),
    ({"schedule": "cron(0 12 * * * *)"},
     "spec.triggers[0].schedule: exactly one of day-of-month and day-of-week must be '?' (got '*' and '*' in "
     "'cron(0 12 * * * *)')"),
    ({"nats": {"subject": "orders..created"}},
     "spec.triggers[0].nats.subject: must be a NATS subject such as orders.created (got 'orders..created')"),
    ({"nats": {}}, "spec.triggers[0].nats.subject: is required"),
    ({"kafka": {"topic": "x"}}, "spec.triggers[0].kafka: is not a known field"),
])
def test_bad_triggers_are_reported_by_field(trigger: dict[str, Any], error: str) -> None:
    assert error in errors_of(function_manifest(triggers=[trigger]))


@pytest.mark.parametrize("subject", ["orders.created", "orders.*", "orders.>", "a.*.c"])
def test_nats_wildcard_subjects_are_accepted(subject: str) -> None:
    assert parse_function(function_manifest(triggers=[{"nats": {"subject": subject}}])).spec.triggers[0].nats


def test_async_settings_and_triggers_do_not_change_the_code_hash() -> None:
    plain = parse_function(function_manifest())
    with_triggers = parse_function(function_manifest(triggers=[{"schedule": "rate(5 minutes)"}],
                                                     **{"async": {"maxRetryAttempts": 0}}))
    assert plain.code_hash() == with_triggers.code_hash()


# -- the CRD says the same ----------------------------------------------------------------------

def _spec_schema() -> dict[str, Any]:
    return crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _schema_errors(spec: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(_spec_schema())
    return [error.message for error in validator.iter_errors(spec)]


def _rule_holds(node: dict[str, Any], value: dict[str, Any]) -> bool:
    env = celpy.Environment()
    [rule] = node["x-kubernetes-validations"]
    return bool(env.program(env.compile(rule["rule"])).evaluate({"self": celpy.json_to_cel(value)}))


def test_crd_bounds_retry_attempts_and_event_age() -> None:
    assert _schema_errors({"async": {"maxRetryAttempts": 3}}) == ["3 is greater than the maximum of 2"]
    assert _schema_errors({"async": {"maximumEventAgeSeconds": 30}}) == ["30 is less than the minimum of 60"]


def test_crd_checks_destination_urls_and_function_names() -> None:
    assert len(_schema_errors({"async": {"onSuccess": {"url": "ftp://x"}}})) == 1
    assert len(_schema_errors({"async": {"onFailure": {"function": "Bad_Name"}}})) == 1
    assert _schema_errors({"async": {"onFailure": {"function": "audit.ops"}}}) == []


def test_crd_rule_wants_exactly_one_destination_kind() -> None:
    node = _spec_schema()["properties"]["async"]["properties"]["onSuccess"]
    assert _rule_holds(node, {"url": "http://x"})
    assert not _rule_holds(node, {"url": "http://x", "function": "f"})
    assert not _rule_holds(node, {})


def test_crd_rule_wants_exactly_one_trigger_kind() -> None:
    node = _spec_schema()["properties"]["triggers"]["items"]
    assert _rule_holds(node, {"schedule": "rate(5 minutes)"})
    assert not _rule_holds(node, {"schedule": "rate(5 minutes)", "nats": {"subject": "a"}})
    assert not _rule_holds(node, {})


def test_crd_checks_the_shape_of_schedules_and_subjects() -> None:
    assert _schema_errors({"triggers": [{"schedule": "rate(5 minutes)"}, {"schedule": "cron(0 12 * * ? *)"},
                                        {"schedule": "*/5 * * * *"}, {"nats": {"subject": "orders.>"}}]}) == []
    assert len(_schema_errors({"triggers": [{"schedule": "every five minutes"}]})) == 1
    assert len(_schema_errors({"triggers": [{"nats": {"subject": "a b"}}]})) == 1
    assert len(_schema_errors({"triggers": [{"schedule": "rate(1 minute)"}] * 17})) == 1


def test_async_settings_and_triggers_do_not_roll_instances() -> None:
    plain = parse_function(function_manifest())
    with_triggers = parse_function(function_manifest(triggers=[{"schedule": "rate(5 minutes)"}],
                                                     **{"async": {"maxRetryAttempts": 0}}))
    assert plain.spec_hash() == with_triggers.spec_hash()
