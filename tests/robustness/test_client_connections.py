"""Clients that hold the gateway's connections: one that stops reading its answer, and more
connections than the gateway takes (issue 15, item 5), against a real `kfn local`.

Each test asserts the behaviour wanted (never a duration): run against an older checkout
(`KFN_ROBUSTNESS_TARGET`, see harness.py) it shows the defect as a failure.
"""
from __future__ import annotations

import socket
from pathlib import Path

from tests.robustness.harness import connect, serving, status_of
from tests.support.localmode import HELLO, write_manifest
from tests.support.waiting import wait_until

TCP_CLOSE = 7   # tcpi_state of a socket the peer reset

BIG = """
    def handler(event, context):
        return {"statusCode": 200, "body": "x" * 5_000_000}
"""


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def exchange_keeping_alive(sock: socket.socket, path: str) -> tuple[int | None, bytes]:
    """One GET on a connection that stays open: (status, the answer's head and body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return status_of(data), data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status_of(data), head + b"\r\n\r\n" + body


def test_clients_that_stop_reading_a_big_answer_are_reset_and_the_next_request_is_served(tmp_path: Path) -> None:
    write_manifest(tmp_path, "big", BIG, scale={"minReplicas": 1})
    with serving(tmp_path, "--send-timeout", "1s") as local:
        wait_until(lambda: local.ready("big") == 1, timeout=30, what="big's instance")
        sockets = []
        try:
            for _ in range(5):
                sock = connect(local.port)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /function/big HTTP/1.1\r\nHost: x\r\n\r\n")
                sockets.append(sock)
            # They read nothing: kfn local resets each connection, dropping the answer it buffered.
            wait_until(lambda: all(tcp_state(sock) == TCP_CLOSE for sock in sockets), timeout=30,
                       interval=0.2, what="kfn local to reset the connections of clients that stopped reading")
        finally:
            for sock in sockets:
                sock.close()
        result = local.invoke("big", timeout=30)
        assert (result.status, len(result.body)) == (200, 5_000_000)


def test_a_connection_over_the_cap_is_answered_503_and_one_is_served_again_once_others_go(tmp_path: Path) -> None:
    write_manifest(tmp_path, "hello", HELLO)
    with serving(tmp_path, "--max-connections", "4", "--idle-timeout", "5m") as local:
        held: list[socket.socket] = []
        try:
            # Four connections kept alive, each known to be served (a health check's own
            # connection may not have been closed yet: a 503 on the way there is tried again).
            for _ in range(40):
                if len(held) == 4:
                    break
                sock = connect(local.port)
                if exchange_keeping_alive(sock, "/healthz")[0] == 200:
                    held.append(sock)
                else:
                    sock.close()
            assert len(held) == 4
            with connect(local.port) as sock:
                status, answer = exchange_keeping_alive(sock, "/function/hello")
                assert status == 503, answer[:300]
                assert b"Retry-After:" in answer
                assert sock.recv(65536) == b""   # and closed
            held.pop().close()
            held.pop().close()
            wait_until(lambda: local.invoke("hello").status == 200, timeout=30, interval=0.2,
                       what="a request once two held connections were closed")
        finally:
            for sock in held:
                sock.close()
