"""The benchmark script still runs (figures are reported in notes, never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("loadgen", [(), ("--no-wrk",)], ids=["wrk-if-installed", "aiohttp-client"])
def test_benchmark_runs_end_to_end(loadgen: tuple[str, ...]) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--seconds", "1", "--connections", "4",
                          "--events", "5", "--rounds", "1", *loadgen],
                         capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("JSON "))
    data = json.loads(line[5:])
    for size in ("large", "small", "jellyfin"):
        for receiver in ("bare", "floor", "daemon"):
            assert data["throughput"][size][receiver]["requests"] > 0, (size, receiver)
        assert data["throughput"][size]["daemon_per_floor"] > 0
    assert data["latency"]["delivered"] == 5
    assert "daemon/floor" in out.stdout and "RSS" in out.stdout
