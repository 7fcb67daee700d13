"""The runtime's HTTP/1.1 parser (`kfn_runtime.wire`), which both the invoke endpoint and the
Runtime API read requests with."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kfn_runtime.wire import MAX_HEAD_BYTES, BadRequest, Request, RequestParser, response


def parse(data: bytes, *, max_body: int = 1024) -> list[Request]:
    """Every complete request in `data`, fed in one piece."""
    parser = RequestParser(max_body=max_body)
    parser.feed(data)
    requests = []
    for _ in range(100):   # bounded: never more requests than that in one test
        request = parser.next()
        if request is None:
            break
        requests.append(request)
    return requests


def parse_one(data: bytes, *, max_body: int = 1024) -> Request:
    requests = parse(data, max_body=max_body)
    assert len(requests) == 1, requests
    return requests[0]


def rejected(data: bytes, *, max_body: int = 1024) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        parse(data, max_body=max_body)
    return info.value


# --- bodies ----------------------------------------------------------------------------------

def test_content_length_body_is_read() -> None:
    request = parse_one(b"POST /invoke?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")
    assert (request.method, request.target, request.path, request.body) == ("POST", "/invoke?x=1", "/invoke",
                                                                            b"hello")


def test_request_without_length_has_an_empty_body() -> None:
    assert parse_one(b"GET /_/health HTTP/1.1\r\nHost: h\r\n\r\n").body == b""


def test_incomplete_body_waits_for_more_bytes() -> None:
    parser = RequestParser(max_body=100)
    parser.feed(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello")
    assert parser.next() is None
    assert parser.pending
    parser.feed(b"world")
    request = parser.next()
    assert request is not None and request.body == b"helloworld"
    assert not parser.pending


def test_request_fed_one_byte_at_a_time_is_read_once_complete() -> None:
    data = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    parser = RequestParser(max_body=100)
    for i, byte in enumerate(data):
        parser.feed(bytes([byte]))
        request = parser.next()
        assert (request is None) == (i < len(data) - 1)
    assert request is not None and request.body == b"abc"


def test_chunked_body_is_decoded() -> None:
    request = parse_one(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n1;ext=1\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n")
    assert request.body == b"hello 0123456789"


def test_chunked_body_with_trailers_is_decoded_and_the_trailers_consumed() -> None:
    requests = parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
                     b"GET /next HTTP/1.1\r\n\r\n")
    assert [(r.method, r.body) for r in requests] == [("POST", b"abc"), ("GET", b"")]


def test_incomplete_chunked_body_waits_for_more_bytes() -> None:
    parser = RequestParser(max_body=100)
    parser.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    assert parser.next() is None
    parser.feed(b"lo\r\n0\r\n")
    assert parser.next() is None   # the final CRLF is still missing
    parser.feed(b"\r\n")
    request = parser.next()
    assert request is not None and request.body == b"hello"


# --- pipelining and keep-alive -----------------------------------------------------------------

PIPELINED = (b"POST /2018-06-01/runtime/invocation/abc/response HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}"
             b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\r\nHost: runtime\r\n\r\n"
             b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")


def test_pipelined_requests_are_returned_in_order() -> None:
    requests = parse(PIPELINED)
    assert [(r.method, r.path, r.body) for r in requests] == [
        ("POST", "/2018-06-01/runtime/invocation/abc/response", b"{}"),
        ("GET", "/2018-06-01/runtime/invocation/next", b""),
        ("POST", "/c", b"ok")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(PIPELINED)), max_size=8))
def test_pipelined_requests_parse_the_same_however_the_bytes_are_split(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(PIPELINED)]
    parser = RequestParser(max_body=1024)
    requests = []
    for start, end in zip(points, points[1:], strict=False):
        parser.feed(PIPELINED[start:end])
        for _ in range(10):
            request = parser.next()
            if request is None:
                break
            requests.append(request)
    assert [(r.method, r.target, r.headers, r.body) for r in requests] == [
        (r.method, r.target, r.headers, r.body) for r in parse(PIPELINED)]
    assert not parser.pending


@pytest.mark.parametrize(("head", "keep_alive"), [
    (b"GET / HTTP/1.1\r\n", True),
    (b"GET / HTTP/1.1\r\nConnection: close\r\n", False),
    (b"GET / HTTP/1.1\r\nConnection: Close\r\n", False),
    (b"GET / HTTP/1.1\r\nConnection: keep-alive\r\n", True),
    (b"GET / HTTP/1.0\r\n", False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n", True),
    (b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n", True),
], ids=["1.1-default", "1.1-close", "1.1-close-any-case", "1.1-keep-alive", "1.0-default", "1.0-keep-alive",
        "1.0-keep-alive-any-case"])
def test_keep_alive_follows_the_version_and_connection_header(head: bytes, keep_alive: bool) -> None:
    assert parse_one(head + b"\r\n").keep_alive is keep_alive


# --- headers ---------------------------------------------------------------------------------

def test_header_names_are_lower_cased_and_values_stripped() -> None:
    request = parse_one(b"GET / HTTP/1.1\r\nX-Amz-Log-Type:   Tail  \r\nLambda-Runtime-Function-Error-Type:E\r\n\r\n")
    assert request.headers == {"x-amz-log-type": "Tail", "lambda-runtime-function-error-type": "E"}


def test_repeated_headers_are_joined_with_commas() -> None:
    request = parse_one(b"GET / HTTP/1.1\r\nAccept: a\r\naccept: b\r\n\r\n")
    assert request.headers["accept"] == "a, b"


def test_empty_header_value_is_kept() -> None:
    assert parse_one(b"GET / HTTP/1.1\r\nX-Empty:\r\n\r\n").headers == {"x-empty": ""}


# --- malformed requests ----------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    b"NONSENSE", b"GET /", b"GET / HTTP/1.1 extra", b"GET  / HTTP/1.1", b"GET / HTTP/2.0", b"GET / FTP/1.1", b"",
], ids=["one-word", "no-version", "four-parts", "double-space", "http2", "not-http", "empty"])
def test_malformed_request_line_is_a_400(line: bytes) -> None:
    error = rejected(line + b"\r\nHost: h\r\n\r\n")
    assert error.status == 400
    assert "request line" in str(error)


@pytest.mark.parametrize("header", [
    b"NoColon", b": no-name", b"Space Before : x", b" Folded: x", b"\tTabbed: x",
], ids=["no-colon", "no-name", "space-before-colon", "leading-space", "leading-tab"])
def test_malformed_header_line_is_a_400(header: bytes) -> None:
    error = rejected(b"GET / HTTP/1.1\r\nHost: h\r\n" + header + b"\r\n\r\n")
    assert error.status == 400
    assert "header" in str(error)


@pytest.mark.parametrize("value", [b"a\nInjected: b", b"a\rInjected: b", b"a\x00b"],
                         ids=["bare-lf", "bare-cr", "nul"])
def test_bare_cr_lf_or_nul_in_a_header_value_is_a_400(value: bytes) -> None:
    # The trace id and the like are passed on in the Runtime API's headers: a bare LF in one would
    # forge a header for a client that ends lines at LF (curl, in AWS's runtime interface clients).
    error = rejected(b"GET / HTTP/1.1\r\nX-Amzn-Trace-Id: " + value + b"\r\n\r\n")
    assert error.status == 400


@pytest.mark.parametrize("value", [b"abc", b"-1", b"+5", b"5, 5", b"", b"0x5", b"\xb2", b"9" * 5000],
                         ids=["word", "negative", "plus", "list", "empty", "hex", "superscript-two",
                              "more-digits-than-int-reads"])
def test_invalid_content_length_is_a_400(value: bytes) -> None:
    error = rejected(b"POST / HTTP/1.1\r\nContent-Length: " + value + b"\r\n\r\nxx")
    assert error.status == 400


def test_a_content_length_of_more_digits_than_int_reads_is_a_400_for_a_skipping_parser_too() -> None:
    # int() refuses more than 4,300 digits with a ValueError, which the servers do not catch.
    with pytest.raises(BadRequest) as info:
        skipping([b"POST /r HTTP/1.1\r\nContent-Length: " + b"1" * 5000 + b"\r\n\r\n"])
    assert info.value.status == 400


def test_unsupported_transfer_encoding_is_a_400() -> None:
    assert rejected(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").status == 400


def test_transfer_encoding_together_with_content_length_is_a_400() -> None:
    # The classic request-smuggling ambiguity: refuse it rather than pick one.
    error = rejected(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n")
    assert error.status == 400


@pytest.mark.parametrize("size", [b"zz", b"-2", b"+2", b"0x2", b"1_0", b""],
                         ids=["not-hex", "negative", "plus", "0x-prefix", "underscore", "empty"])
def test_malformed_chunk_size_is_a_400(size: bytes) -> None:
    error = rejected(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nab\r\n0\r\n\r\n")
    assert error.status == 400


def test_chunk_longer_than_its_size_is_a_400() -> None:
    error = rejected(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabcd\r\n0\r\n\r\n")
    assert error.status == 400


# --- limits ----------------------------------------------------------------------------------

def test_head_without_an_end_beyond_the_limit_is_a_400() -> None:
    parser = RequestParser(max_body=10)
    parser.feed(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES)
    with pytest.raises(BadRequest) as info:
        parser.next()
    assert info.value.status == 400


def test_head_beyond_the_limit_is_a_400_even_when_it_arrives_whole() -> None:
    error = rejected(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", max_body=10)
    assert error.status == 400
    assert "head too large" in str(error)


def test_head_just_within_the_limit_is_read() -> None:
    prefix = b"GET / HTTP/1.1\r\nX-Big: "
    request = parse_one(prefix + b"a" * (MAX_HEAD_BYTES - len(prefix)) + b"\r\n\r\n")
    assert len(request.headers["x-big"]) == MAX_HEAD_BYTES - len(prefix)


def test_content_length_over_the_body_limit_is_a_413_before_the_body_arrives() -> None:
    error = rejected(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n", max_body=10)
    assert error.status == 413


def test_body_exactly_at_the_limit_is_read() -> None:
    assert parse_one(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789", max_body=10).body == b"0123456789"


def test_chunked_body_over_the_limit_is_a_413() -> None:
    error = rejected(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n",
                     max_body=10)
    assert error.status == 413


def test_feeding_more_than_a_head_and_a_body_can_hold_is_a_413() -> None:
    parser = RequestParser(max_body=10)
    with pytest.raises(BadRequest) as info:
        for _ in range(100):   # bounded: the limit is far below 100 such pieces
            parser.feed(b"x" * 4096)
    assert info.value.status == 413


# --- oversized bodies thrown away (the Runtime API's parser) ------------------------------------------

OVERSIZED = (b"POST /r HTTP/1.1\r\nContent-Length: 20\r\n\r\n" + b"x" * 20
             + b"GET /next HTTP/1.1\r\n\r\n")
OVERSIZED_CHUNKED = (b"POST /r HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n"
                     b"c;ext=1\r\nghijklmnopqr\r\n3\r\nstu\r\n0\r\nTrailer: t\r\n\r\n"
                     b"GET /next HTTP/1.1\r\n\r\n")


def skipping(pieces: list[bytes], *, max_body: int = 10) -> list[Request]:
    """Every request a skipping parser returns for `pieces` fed one after another."""
    parser = RequestParser(max_body=max_body, skip_oversized=True)
    requests = []
    for piece in pieces:
        parser.feed(piece)
        for _ in range(100):   # bounded
            request = parser.next()
            if request is None:
                break
            requests.append(request)
    return requests


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


@pytest.mark.parametrize(("data", "size"), [(OVERSIZED, 20), (OVERSIZED_CHUNKED, 21)], ids=["length", "chunked"])
def test_an_oversized_body_is_thrown_away_and_the_connection_goes_on(data: bytes, size: int) -> None:
    post, after = skipping([data])
    assert (post.method, post.target, post.body, post.oversized) == ("POST", "/r", b"", size)
    assert (after.target, after.oversized) == ("/next", 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=400), max_size=8), st.booleans())
def test_an_oversized_body_is_skipped_the_same_however_the_bytes_are_split(cuts: list[int], chunked: bool) -> None:
    data = OVERSIZED_CHUNKED if chunked else OVERSIZED
    requests = skipping(split(data, cuts))
    assert [(r.target, r.oversized) for r in requests] == [("/r", 21 if chunked else 20), ("/next", 0)]


def test_an_oversized_body_is_not_returned_before_it_has_all_come() -> None:
    parser = RequestParser(max_body=10, skip_oversized=True)
    parser.feed(b"POST /r HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 65536)
    assert parser.next() is None and parser.pending
    for _ in range(14):
        parser.feed(b"x" * 65536)   # many times the limit: thrown away as it comes, never buffered
        assert parser.next() is None
    parser.feed(b"x" * (1000000 - 15 * 65536))
    request = parser.next()
    assert request is not None and request.oversized == 1000000
    assert not parser.pending


def test_a_chunked_body_arriving_in_one_piece_far_over_the_limit_is_skipped_too() -> None:
    # The chunk that passes the limit is seen only once its size line is parsed, by when one read
    # may have brought far more than the limit (each read, not each chunk, is what arrives).
    body = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (150_000, b"a" * 150_000, 400_000, b"b" * 400_000)
    data = b"POST /r HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + body + b"GET /next HTTP/1.1\r\n\r\n"
    requests = skipping([data], max_body=200_000)
    assert [(r.target, r.oversized) for r in requests] == [("/r", 550_000), ("/next", 0)]


def test_a_malformed_chunk_in_a_skipped_body_is_still_a_400() -> None:
    with pytest.raises(BadRequest) as info:
        skipping([b"POST /r HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nb\r\nabcdefghijk\r\nzz\r\n"])
    assert info.value.status == 400


def tiny_chunks(count: int) -> bytes:
    """A chunked request whose body is `count` chunks of one byte each (6 bytes of framing apiece)."""
    return (b"POST /r HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1\r\nx\r\n" * count
            + b"0\r\n\r\n")


@pytest.mark.parametrize("skip_oversized", [False, True], ids=["refusing", "skipping"])
def test_a_body_of_tiny_chunks_within_the_limit_is_read_however_much_framing_it_has(skip_oversized: bool) -> None:
    # 30,000 one-byte chunks: a body within the limit in 180 kB of framing, more than a head and
    # a body may hold buffered. Decoded chunks leave the buffer as they are read, so only the
    # body counts; each piece is parsed once (parsing the whole body again at every piece took
    # 46 s of the host's CPU for a 1 MB body of such chunks).
    data = tiny_chunks(30_000)
    parser = RequestParser(max_body=30_000, skip_oversized=skip_oversized)
    requests = []
    for at in range(0, len(data), 4096):
        parser.feed(data[at:at + 4096])
        request = parser.next()
        if request is not None:
            requests.append(request)
    assert [(r.body, r.oversized) for r in requests] == [(b"x" * 30_000, 0)]
    assert not parser.pending


def test_a_body_of_tiny_chunks_over_the_limit_is_skipped() -> None:
    requests = skipping([tiny_chunks(30_000)[at:at + 4096] for at in range(0, 30_000 * 6 + 60, 4096)],
                        max_body=10_000)
    assert [(r.target, r.oversized) for r in requests] == [("/r", 30_000)]


def test_a_body_within_the_limit_is_read_by_a_skipping_parser() -> None:
    [request] = skipping([b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789"])
    assert (request.body, request.oversized) == (b"0123456789", 0)


# --- Expect: 100-continue --------------------------------------------------------------------------

def test_complete_head_expecting_continue_without_its_body_awaits_continue() -> None:
    parser = RequestParser(max_body=100)
    parser.feed(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n")
    assert parser.next() is None
    assert parser.awaiting_continue()
    parser.feed(b"h")
    assert not parser.awaiting_continue()   # the body is coming


def test_a_chunked_body_whose_chunks_have_come_no_longer_awaits_continue() -> None:
    # Decoded chunks leave the buffer: it holds the head alone again, and must not look as if
    # nothing of the body had come (a second 100 Continue mid-body).
    parser = RequestParser(max_body=100)
    parser.feed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")
    assert parser.next() is None and parser.awaiting_continue()
    parser.feed(b"3\r\nabc\r\n")
    assert parser.next() is None
    assert not parser.awaiting_continue()
    parser.feed(b"0\r\n\r\n")
    request = parser.next()
    assert request is not None and request.body == b"abc"


@pytest.mark.parametrize("data", [
    b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nExpect: 100-continue\r\n",
    b"",
], ids=["no-expect", "head-incomplete", "nothing"])
def test_other_requests_do_not_await_continue(data: bytes) -> None:
    parser = RequestParser(max_body=100)
    parser.feed(data)
    assert parser.next() is None
    assert not parser.awaiting_continue()


# --- responses -------------------------------------------------------------------------------

def test_response_is_framed_with_its_length() -> None:
    data = response(202, b'{"status":"OK"}', [("Content-Type", "application/json")])
    assert data == (b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
                    b'{"status":"OK"}')


def test_response_that_closes_says_so() -> None:
    head = response(503, b"", close=True).split(b"\r\n\r\n")[0]
    assert head.split(b"\r\n") == [b"HTTP/1.1 503 Service Unavailable", b"Content-Length: 0", b"Connection: close"]


def test_response_with_an_unknown_status_still_has_a_reason() -> None:
    assert response(299).startswith(b"HTTP/1.1 299 Unknown\r\n")
