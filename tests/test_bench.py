"""The benchmark script still runs (figures are reported in notes, never asserted here).

The smoke only proves the bench runs end to end with each load generator and that its figures are
sane: every receiver answered some requests and every latency event was delivered. It runs each
load for the least time the tool takes (wrk counts whole seconds; the aiohttp client 0.2 s, also where
the wrk variant falls back to it because wrk is not installed) with two connections and two events;
wrk's whole seconds are spent on one payload, the aiohttp client runs all three.
CWHOOK_BENCH_SECONDS and CWHOOK_BENCH_EVENTS raise them for a soak.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


EVENTS = int(os.environ.get("CWHOOK_BENCH_EVENTS", "2"))


@pytest.mark.parametrize(("loadgen", "seconds", "payloads"),
                         [((), "1", ("large",)), (("--no-wrk",), "0.2", ("large", "small", "jellyfin"))],
                         ids=["wrk-if-installed", "aiohttp-client"])
def test_benchmark_runs_end_to_end(loadgen: tuple[str, ...], seconds: str, payloads: tuple[str, ...]) -> None:
    if not loadgen and shutil.which("wrk") is None:
        seconds = "0.2"
    seconds = os.environ.get("CWHOOK_BENCH_SECONDS", seconds)
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--seconds", seconds, "--connections", "2",
                          "--events", str(EVENTS), "--rounds", "1", "--payloads", ",".join(payloads), *loadgen],
                         capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("JSON "))
    data = json.loads(line[5:])
    assert set(data["throughput"]) >= set(payloads)
    for size in payloads:
        for receiver in ("bare", "floor", "daemon"):
            assert data["throughput"][size][receiver]["requests"] > 0, (size, receiver)
        assert data["throughput"][size]["daemon_per_floor"] > 0
    assert data["latency"]["delivered"] == EVENTS
    assert "daemon/floor" in out.stdout and "RSS" in out.stdout
