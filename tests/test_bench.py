"""The benchmark scripts still run (figures are reported in notes, never asserted here).

The smoke only proves the bench runs end to end with each load generator and that its figures are
sane: every receiver answered some requests and every latency event was delivered. It runs each
load for the least time the tool takes (wrk counts whole seconds; the aiohttp client 0.2 s, also where
the wrk variant falls back to it because wrk is not installed) with two connections and two events;
wrk's whole seconds are spent on one payload, the aiohttp client runs all three.
CWHOOK_BENCH_SECONDS and CWHOOK_BENCH_EVENTS raise them for a soak. The other scripts (accounts,
backlog, micro, fuzz_rss) run once each with the least work that still gives their figures.
"""

from __future__ import annotations

import json
import os
import re
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


# --- the other bench scripts: each still runs, its output is sane (numbers in notes, not here) ------


def bench(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args],
                         capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_accounts_bench_routes_to_the_account_in_the_middle() -> None:
    # It exits non-zero unless a decision line names the account the webhooks were routed to
    # (it read the log as text once, and broke when the lines lost their blanks).
    text = bench("accounts.py", "--accounts", "5", "--seconds", "1", "--idle", "0.2")
    lines = [x for x in text.splitlines() if "account(s):" in x]
    assert len(lines) == 2 and all("non-2xx 0" in x for x in lines), text
    ratio = float(re.search(r"5 accounts / 1 account: ([\d.]+)", text).group(1))  # type: ignore[union-attr]
    assert ratio > 0


def test_backlog_bench_measures_each_backlog() -> None:
    text = bench("backlog.py", "--pending", "50,100", "--measure", "40")
    rows = [x.split() for x in text.splitlines() if x.split() and x.split()[0] in ("50", "100")]
    assert [r[0] for r in rows] == ["50", "100"] and all(float(r[1]) > 0 for r in rows), text
    assert "ratio" in text


def test_micro_bench_times_each_parser() -> None:
    text = bench("micro.py")
    assert [x.split(":")[0] for x in text.splitlines()] == ["plex small", "plex large", "jellyfin"], text


def test_fuzz_rss_bench_sees_no_5xx() -> None:
    text = bench("fuzz_rss.py", "--per-round", "100", "--rounds", "1")
    assert re.search(r"after \d+ requests: RSS [\d.]+ MB, sessions \d+, 5xx 0 ", text), text
