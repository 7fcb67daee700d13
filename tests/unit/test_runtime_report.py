"""Lambda's REPORT line as the host writes it (`kfn_runtime.reports.report_line`) and the peak memory
it reports (`peak_memory_mb`): the platform lines the log and `LogType=Tail` carry."""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest

from kfn_runtime.reports import peak_memory_mb, report_line


def test_report_line_has_lambdas_fields_in_lambdas_format() -> None:
    assert report_line("id-1", duration_ms=12.341, memory_mb=128, max_memory_mb=45, init_ms=123.456) == (
        "REPORT RequestId: id-1\tDuration: 12.34 ms\tBilled Duration: 13 ms\tMemory Size: 128 MB\t"
        "Max Memory Used: 45 MB\tInit Duration: 123.46 ms")


def test_report_line_of_a_warm_invocation_has_no_init_duration() -> None:
    assert report_line("id-2", duration_ms=0.4, memory_mb=256, max_memory_mb=30) == (
        "REPORT RequestId: id-2\tDuration: 0.40 ms\tBilled Duration: 1 ms\tMemory Size: 256 MB\t"
        "Max Memory Used: 30 MB")


def test_report_line_leaves_out_a_peak_that_could_not_be_read() -> None:
    line = report_line("id-3", duration_ms=3.0, memory_mb=128, init_ms=9.999)
    assert line == "REPORT RequestId: id-3\tDuration: 3.00 ms\tBilled Duration: 3 ms\tMemory Size: 128 MB\t" \
                   "Init Duration: 10.00 ms"


def test_billed_duration_is_the_duration_rounded_up_to_the_millisecond() -> None:
    assert "\tBilled Duration: 1001 ms\t" in report_line("i", duration_ms=1000.01, memory_mb=128)
    assert "\tBilled Duration: 7 ms\t" in report_line("i", duration_ms=7.0, memory_mb=128)


def vmhwm_kb() -> int:
    status = Path(f"/proc/{os.getpid()}/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_peak_memory_is_the_processs_vmhwm_in_mb_rounded_up() -> None:
    before = vmhwm_kb()
    peak = peak_memory_mb(os.getpid())
    after = vmhwm_kb()   # a peak only grows: the answer lies between the two readings
    assert peak is not None and math.ceil(before / 1024) <= peak <= math.ceil(after / 1024)


def test_peak_memory_of_no_process_or_a_gone_one_is_unknown() -> None:
    assert peak_memory_mb(None) is None
    assert peak_memory_mb(2 ** 22 + 12345) is None   # above Linux's largest pid
