"""Lambda's REPORT line of an invocation, and the peak memory it reports."""
from __future__ import annotations

import math
import os


def report_line(request_id: str, *, duration_ms: float, memory_mb: int, max_memory_mb: int | None = None,
                init_ms: float | None = None) -> str:
    """Lambda's REPORT line of an invocation, in its format; `Max Memory Used` when the environment's
    peak is known, `Init Duration` on the invocation that paid its environment's cold start."""
    line = (f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms\tBilled Duration: "
            f"{math.ceil(duration_ms)} ms\tMemory Size: {memory_mb} MB")
    if max_memory_mb is not None:
        line += f"\tMax Memory Used: {max_memory_mb} MB"
    if init_ms is not None:
        line += f"\tInit Duration: {init_ms:.2f} ms"
    return line


def kib_to_mb(kib: int) -> int:
    """KiB in MB rounded up, as Lambda's `Max Memory Used` counts."""
    return -(-kib // 1024)


def peak_memory_mb(pid: int | None) -> int | None:
    """The peak resident memory of process `pid` so far (VmHWM), in MB rounded up as Lambda's
    `Max Memory Used`; None where it cannot be read (the process is gone, no /proc)."""
    if pid is None:
        return None
    try:
        fd = os.open(f"/proc/{pid}/status", os.O_RDONLY)
    except OSError:
        return None
    try:
        status = os.read(fd, 8192)
    except OSError:
        return None
    finally:
        os.close(fd)
    at = status.find(b"VmHWM:")
    if at < 0:
        return None
    fields = status[at + 6:status.find(b"\n", at)].split()
    if not fields or not fields[0].isdigit():
        return None
    return kib_to_mb(int(fields[0]))
