"""The gateway serves with uvloop (as `kfn local` and the gateway image run it): the same
behaviours, replayed on uvloop's event loop, whose transports differ from asyncio's."""
from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from . import test_gateway_connections as connections
from . import test_gateway_failures as failures
from . import test_gateway_http as http
from . import test_gateway_invoking as invoking
from . import test_gateway_metrics as metrics
from . import test_gateway_routing as routing
from . import test_gateway_upstream as upstream

Scenario = Callable[[], Coroutine[Any, Any, None]]

SCENARIOS: dict[str, Scenario] = {
    "event": functools.partial(http.test_a_request_reaches_the_function_as_a_2_0_event, "http"),
    "event-in-process": functools.partial(http.test_a_request_reaches_the_function_as_a_2_0_event, "in-process"),
    "structured-response": http.test_a_structured_response_comes_back_with_its_status_headers_cookies_and_body,
    "function-error": functools.partial(http.test_a_function_error_is_500_internal_server_error, "http"),
    "five-megabytes": http.test_five_megabyte_bodies_travel_both_ways,
    "chunked-upload": http.test_a_chunked_five_megabyte_upload_reaches_the_function_whole,
    "head": http.test_head_keeps_the_functions_content_length,
    "cors-preflight": http.test_a_cors_preflight_is_answered_204_without_invoking_the_function,
    "capacity-and-order": routing.test_an_instance_never_gets_more_than_its_capacity_and_waiters_are_served_in_order,
    "one-scale-up": routing.test_twenty_concurrent_first_requests_cause_one_scale_up_and_all_succeed,
    "refused-connection": failures.test_an_instance_refusing_connections_is_skipped_and_the_request_retried,
    "dying-instance": failures.test_an_instance_dying_mid_invocation_is_502_and_reported_and_never_retried,
    "slow-instance": failures.test_an_instance_slower_than_the_function_timeout_is_504_json,
    "client-disconnect": failures.test_a_client_disconnecting_mid_request_keeps_its_slot_until_the_instance_finishes,
    "client-disconnect-in-process": failures.test_a_client_leaving_keeps_an_in_process_slot_until_the_instance_finishes,
    "rejected": functools.partial(
        failures.test_a_request_a_draining_or_loading_instance_turned_away_goes_to_another_instance,
        "draining", "http"),
    "stale-connection": invoking.test_a_stale_reused_connection_is_sent_again_once_on_a_new_one,
    "keep-alive": upstream.test_sequential_requests_reuse_one_keep_alive_connection,
    "large-answer": upstream.test_a_large_answer_is_read_whole_with_back_pressure,
    "until-close": upstream.test_an_answer_ended_by_closing_the_connection_is_read_whole,
    "early-answer": upstream.test_an_early_answer_to_an_upload_comes_back_and_the_connection_is_not_reused,
    "load-source": metrics.test_metrics_source_reports_the_average_load_and_arrivals_between_collections,
    "send-timeout": connections.test_a_client_that_stops_reading_its_answer_is_reset_after_the_send_timeout,
    "slow-read": connections.test_a_client_reading_a_byte_at_a_time_too_slowly_to_empty_the_buffer_is_reset,
    "kernel-copy": (connections.
                    test_an_answer_left_in_the_kernel_for_a_client_that_never_reads_is_dropped_after_the_send_timeout),
    "connection-cap": connections.test_a_connection_over_the_cap_is_answered_503_and_closed_and_served_once_one_goes,
    "connection-churn": connections.test_connections_ended_in_every_way_give_their_place_under_the_cap_back,
}


@pytest.mark.parametrize("scenario", list(SCENARIOS.values()), ids=list(SCENARIOS))
def test_on_uvloop(scenario: Scenario) -> None:
    uvloop.run(scenario())
