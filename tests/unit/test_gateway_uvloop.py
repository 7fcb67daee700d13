"""The gateway serves with uvloop (as `kfn local` and the gateway image run it): the same
behaviours, replayed on uvloop's event loop, whose transports differ from asyncio's."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import uvloop

from . import test_gateway_failures as failures
from . import test_gateway_metrics as metrics
from . import test_gateway_routing as routing

SCENARIOS: list[Callable[[], Awaitable[None]]] = [
    routing.test_method_path_query_headers_and_body_reach_the_instance,
    routing.test_status_headers_and_several_set_cookies_come_back,
    routing.test_five_megabyte_bodies_stream_both_ways,
    routing.test_a_chunked_five_megabyte_body_streams_to_the_instance,
    routing.test_head_keeps_the_instances_content_length,
    routing.test_an_instance_never_gets_more_than_its_capacity_and_waiters_are_served_in_order,
    routing.test_twenty_concurrent_first_requests_cause_one_scale_up_and_all_succeed,
    failures.test_an_instance_refusing_connections_is_skipped_and_the_request_retried,
    failures.test_an_instance_slower_than_the_function_timeout_is_504_json,
    failures.test_a_client_disconnecting_mid_request_releases_its_slot,
    failures.test_an_instance_dying_mid_response_cuts_the_client_off,
    metrics.test_metrics_source_reports_the_average_load_and_arrivals_between_collections,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__.removeprefix("test_") for s in SCENARIOS])
def test_on_uvloop(scenario: Callable[[], Awaitable[None]]) -> None:
    uvloop.run(scenario())
