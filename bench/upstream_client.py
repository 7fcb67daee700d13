"""The gateway's hand-written upstream client against aiohttp's client, side by side in one run.

Both send the same sequential GETs over one keep-alive connection to the same minimal HTTP/1.1
server on 127.0.0.1 (in another process, so the client's CPU time is what is measured), and the
table shows, per request, wall time and the client process's CPU time. The hand-written client
earns its place in kfn only while this table shows it cheaper.

    python bench/upstream_client.py [--requests 5000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from multiprocessing import Process, Queue

import aiohttp

from kfn_gateway.upstream import Pool

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{\"hello\":\"bench\"}"


def serve(port_queue: Queue) -> None:  # type: ignore[type-arg]
    """A minimal keep-alive server: one fixed answer per request head."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(ANSWER)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port_queue.put(server.sockets[0].getsockname()[1])
        async with server:
            await server.serve_forever()

    asyncio.run(main())


async def kfn_client(port: int, n: int) -> None:
    pool = Pool(connect_timeout=5, keepalive_timeout=30)
    head = b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    for _ in range(n):
        connection = await pool.connect("127.0.0.1", port)
        response = await connection.send(head, None, chunked=False, timeout=5)
        body = response.buffered()
        while not response.complete:
            body += await response.read_chunk(5)
        response.release()
    pool.close()


async def aiohttp_client(port: int, n: int) -> None:
    url = f"http://127.0.0.1:{port}/bench"
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(n):
            async with session.get(url) as response:
                await response.read()


def measure(client: object, port: int, n: int) -> tuple[float, float]:
    """(wall µs per request, client CPU µs per request) of n sequential requests."""
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(client(port, n))  # type: ignore[operator]
    return ((time.perf_counter() - wall) / n * 1e6, (time.process_time() - cpu) / n * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ports: Queue = Queue()  # type: ignore[type-arg]
    server = Process(target=serve, args=(ports,), daemon=True)
    server.start()
    try:
        port = ports.get(timeout=10)
        results: dict[str, list[tuple[float, float]]] = {"kfn upstream (httptools)": [], "aiohttp ClientSession": []}
        for _ in range(args.rounds):  # interleaved, so drift hits both alike
            results["kfn upstream (httptools)"].append(measure(kfn_client, port, args.requests))
            results["aiohttp ClientSession"].append(measure(aiohttp_client, port, args.requests))
    finally:
        server.terminate()
        server.join(5)
    print(f"\nUpstream client, {args.requests} sequential keep-alive GETs x {args.rounds} rounds (medians)\n")
    print("| client | wall µs/request | client CPU µs/request |")
    print("|---|---|---|")
    base = statistics.median(c for _, c in results["aiohttp ClientSession"])
    for name, rows in results.items():
        wall = statistics.median(w for w, _ in rows)
        cpu = statistics.median(c for _, c in rows)
        print(f"| {name} | {wall:.1f} | {cpu:.1f} ({cpu / base:.2f}x aiohttp) |")


if __name__ == "__main__":
    main()
