"""An instance's log: what its execution environments print, line by line, and Lambda's own lines
about each invocation (START, END, REPORT, a timeout), kept too in the invocation's log tail.

`Transcript` is the `InstanceHost`'s; its `output` takes the bytes spawners read from the
environments' stdout/stderr.
"""
from __future__ import annotations

import os

from kfn_runtime.execution import LOG_TAIL_BYTES

TYPE_CHECKING = False  # importing typing costs milliseconds on every cold start
if TYPE_CHECKING:
    from collections.abc import Callable

    from kfn_runtime.execution import Environment, Invocation


class Transcript:
    """Turns environments' output into lines for `log(environment id, line)` and invocations' log tails."""

    def __init__(self, log: Callable[[str, str], None]) -> None:
        self.log = log

    def platform_line(self, env: Environment, invocation: Invocation, line: str) -> None:
        """One of Lambda's own lines about an invocation (START, END, REPORT, a timeout): in the
        environment's log, and in the invocation's log tail, on a line of its own."""
        self.log(env.id, line)
        log = invocation.log
        if log is not None:
            if log and not log.endswith(b"\n"):
                log += b"\n"   # what the function printed last did not end its line
            log += line.encode() + b"\n"

    def drain(self, env: Environment) -> None:
        """Take in at once what `env` has written to its output pipe and the loop has not read yet.

        The pipe and the Runtime API are read by the same loop in no set order: a result may be
        handled before the output the handler printed ahead of it, which would then miss its
        invocation's log tail and land in the next one's (another caller's). What a runtime wrote
        before posting its result is in the pipe by then, so reading the pipe here, without
        waiting, gives the invocation all of it. A pipe already closed, or none, is left alone.
        """
        transport = env.process
        if transport is None or not hasattr(transport, "get_extra_info") or transport.is_closing():
            return
        try:
            fd = transport.get_extra_info("pipe").fileno()
        except (AttributeError, ValueError):
            return
        for _ in range(64):   # at most a pipe's worth is there (its writer blocks beyond); bounded anyway
            try:
                data = os.read(fd, 65536)
            except OSError:   # BlockingIOError: nothing more for now
                return
            if not data:
                return
            self.output(env, data)

    def output(self, env: Environment, data: bytes) -> None:
        """Bytes an environment wrote to stdout/stderr: logged by line, and kept for a log tail."""
        invocation = env.invocation
        if invocation is not None and invocation.log is not None:
            invocation.log += data
            if len(invocation.log) > 2 * LOG_TAIL_BYTES:
                del invocation.log[:-LOG_TAIL_BYTES]
        env.output += data
        *lines, rest = env.output.split(b"\n")
        if len(rest) > 65536:
            lines.append(rest)
            rest = bytearray()
        env.output = bytearray(rest)
        for line in lines:
            self.log(env.id, line.decode(errors="replace").rstrip("\r"))
