"""Benchmark: cwhook against a bare aiohttp baseline, measured in the same run.

    python bench/run.py [--seconds 8] [--connections 32]

1. Starts three receivers on free loopback ports: `cwhook run` as a service runs it (default
   log level, its log written to a file; dry-run, as it is until Trakt is authorized), the
   durable floor bench/floor.py (the least a receiver that keeps a 202's promise must do:
   read, cut out the payload, parse, group-commit to SQLite, answer), and bench/bare.py (reads
   the body, answers 202). Drives each with the same requests from a load generator (wrk when
   installed, else an aiohttp client in a separate process), in interleaved rounds: a Plex
   multipart request (JSON payload plus a 20 KB thumbnail; a large and a small payload) and a
   Jellyfin JSON request. Prints requests/s of each (median over the rounds), daemon/floor and
   daemon/bare, p99 latency, and the RSS of each.
2. Starts the daemon against the fake Trakt (tests/faketrakt.py) and measures the time from a
   `media.scrobble` POST to the fake receiving /scrobble/stop, median over 200 events. Trakt
   allows one POST per second, so this run sets CWHOOK_POST_INTERVAL=0 to measure the pipeline
   itself rather than the pacing.
Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN = "bench-plex-token-0123456789abcdef"
BOUNDARY = "benchboundary7f3a"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


PAYLOADS = {
    "large": "plex_media.scrobble_movie.json",  # 15 KB of JSON: a movie with its whole cast
    "small": "plex_media.pause_episode_legacy-tvdb-agent.json",  # 1.7 KB: a typical episode
    "jellyfin": "jellyfin_PlaybackStop_movie.json",  # 4 KB of JSON, sent as the whole body
}
JELLYFIN_TOKEN = "bench-jellyfin-token-0123456789ab"
# Every server gets a token: a file without one is rewritten by `cwhook run`, and a rewrite waits
# a second for a file written just now to settle (an editor may be saving it), which a start
# figure would then measure.
OTHER_TOKENS = """  emby:
    token: bench-emby-token-0123456789abcdef
  tautulli:
    token: bench-tautulli-token-0123456789ab
"""


def path_for(size: str) -> str:
    if size == "jellyfin":
        return f"/webhook/jellyfintrakt?{JELLYFIN_TOKEN}"
    return f"/webhook/plextrakt?{TOKEN}"


def request_body(size: str = "large", rating_key: str = "26697", event: str = "media.play",
                 user: str | None = None) -> tuple[bytes, str]:
    if size == "jellyfin":
        payload = json.loads((ROOT / "tests/fixtures" / PAYLOADS[size]).read_bytes())
        payload["NotificationType"] = "PlaybackStart"
        return json.dumps(payload).encode(), "application/json"
    payload = json.loads((ROOT / "tests/fixtures" / PAYLOADS[size]).read_bytes())
    payload["Metadata"].setdefault("duration", 1320000)
    payload["event"] = event
    payload["Metadata"]["viewOffset"] = 60000
    payload["Metadata"]["ratingKey"] = rating_key
    if user is not None:
        payload["Account"]["title"] = user
    thumb = b"\xff\xd8\xff\xe0" + bytes(random.Random(7).getrandbits(8) for _ in range(20000))
    body = (
        f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"payload\"\r\n"
        "Content-Type: application/json\r\n\r\n".encode()
        + json.dumps(payload).encode()
        + f"\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"thumb\"; filename=\"thumb.jpg\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + thumb
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={BOUNDARY}"


def config(port: int, state: Path, trakt_url: str = "http://127.0.0.1:9", access: str = "",
           refresh: str = "", debounce: int = 5) -> str:
    return f"""server:
  host: 127.0.0.1
  port: {port}
webhooks:
  plex:
    token: {TOKEN}
  jellyfin:
    token: {JELLYFIN_TOKEN}
{OTHER_TOKENS}scrobble:
  pause_debounce_seconds: {debounce}
trakt:
  api_url: {trakt_url}
  oauth_url: {trakt_url}
  client_id: test-client-id
  client_secret: test-secret
  access_token: "{access}"
  refresh_token: "{refresh}"
  expires_at: {int(time.time()) + 86400 if access else 0}
state:
  dir: {state}
logging:
  level: info
  format: json
"""


def wait_up(port: int, timeout: float = 15, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until /healthz answers on ``port`` (or ``proc``, the server, has exited)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server on port {port} exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not come up")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- load generation ---------------------------------------------------------------------------


async def _client_load(url: str, seconds: float, connections: int, size: str,
                       user: str | None = None) -> dict[str, Any]:
    import aiohttp

    body, ctype = request_body(size, user=user)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": ctype}) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        await asyncio.gather(*[worker(session) for _ in range(connections)])
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p99_ms": latencies[math.ceil(len(latencies) * 0.99) - 1] * 1000,
            "requests": len(latencies), "statuses": statuses, "tool": "aiohttp-client"}


def _wrk_load(url: str, seconds: float, connections: int, size: str, user: str | None = None) -> dict[str, Any]:
    body, ctype = request_body(size, user=user)
    escaped = "".join(f"\\{b}" for b in body)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "{ctype}"\nwrk.body = "{escaped}"\n')
        fh.write("done = function(summary, latency, requests)\n"
                 "  io.write(string.format('JSON {\"requests\": %d, \"p99_us\": %d, \"non2xx\": %d}\\n',"
                 " summary.requests, latency:percentile(99), summary.errors.status))\nend\n")
        script = fh.name
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", script, url],
                         capture_output=True, text=True, timeout=seconds + 30)
    os.unlink(script)
    line = next(x for x in out.stdout.splitlines() if x.startswith("JSON "))
    data = json.loads(line[5:])
    rps = next(float(x.split()[1]) for x in out.stdout.splitlines() if x.startswith("Requests/sec"))
    return {"rps": rps, "p99_ms": data["p99_us"] / 1000, "requests": data["requests"],
            "non2xx": data["non2xx"], "tool": "wrk"}


USE_WRK = True


def load(url: str, seconds: float, connections: int, size: str, user: str | None = None) -> dict[str, Any]:
    if USE_WRK and shutil.which("wrk"):
        return _wrk_load(url, seconds, connections, size, user)
    out = subprocess.run([sys.executable, __file__, "--loadgen", url, str(seconds), str(connections), size,
                          *([user] if user is not None else [])],
                         capture_output=True, text=True, timeout=seconds + 60)
    return dict(json.loads(out.stdout))


# --- the runs --------------------------------------------------------------------------------------


def throughput(seconds: float, connections: int, rounds: int, tmp: Path,
               payloads: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    ports = {"bare": free_port(), "floor": free_port(), "daemon": free_port()}
    cfg = tmp / "bench.yml"
    cfg.write_text(config(ports["daemon"], tmp / "state"))
    log = (tmp / "daemon.log").open("wb")
    procs = {
        "bare": subprocess.Popen([sys.executable, str(ROOT / "bench/bare.py"), str(ports["bare"])]),
        "floor": subprocess.Popen([sys.executable, str(ROOT / "bench/floor.py"), str(ports["floor"]),
                                   str(tmp / "floor.sqlite3")]),
        "daemon": subprocess.Popen([sys.executable, "-m", "cwhook", "run", "-c", str(cfg)],
                                   stdout=log, stderr=log, cwd=tmp),
    }
    try:
        for port in ports.values():
            wait_up(port)
        time.sleep(1)
        results["idle_rss_mb"] = {name: rss_mb(proc.pid) for name, proc in procs.items()}
        for size in payloads:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in procs}
            for i in range(rounds):
                order = list(procs) if i % 2 == 0 else list(reversed(procs))
                for name in order:
                    runs[name].append(load(f"http://127.0.0.1:{ports[name]}{path_for(size)}", seconds,
                                           connections, size))
            row = {name: median_run(r) for name, r in runs.items()}
            row["daemon_per_floor"] = row["daemon"]["rps"] / row["floor"]["rps"]
            row["daemon_per_bare"] = row["daemon"]["rps"] / row["bare"]["rps"]
            row["rounds"] = {name: [round(r["rps"]) for r in rs] for name, rs in runs.items()}
            results[size] = row
        results["rss_after_mb"] = {name: rss_mb(proc.pid) for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            proc.wait(20)
        log.close()
    results["daemon_log_lines"] = sum(1 for _ in (tmp / "daemon.log").open("rb"))
    return results


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median requests/s (its p99 and counts go with it)."""
    return sorted(runs, key=lambda r: float(r["rps"]))[len(runs) // 2]


def scrobble_latency(events: int, tmp: Path) -> dict[str, Any]:
    from tests.faketrakt import FakeTrakt

    fake = FakeTrakt().start()
    fake.rate_limit = False
    fake.add_movies(events)
    access, refresh, _ = fake.issue_tokens()
    port = free_port()
    cfg = tmp / "latency.yml"
    cfg.write_text(config(port, tmp / "state2", fake.url, access, refresh))
    env = dict(os.environ, CWHOOK_POST_INTERVAL="0")
    daemon = subprocess.Popen([sys.executable, "-m", "cwhook", "run", "-c", str(cfg)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp)
    samples: list[float] = []
    try:
        wait_up(port)
        payload = json.loads((ROOT / "tests/fixtures/plex_media.scrobble_movie.json").read_bytes())
        for i in range(events):
            payload["Player"]["uuid"] = f"player-{i}"
            # a different film each time: every one is a real watch (one play per film and
            # account within the hour, so the same film again would rightly be dropped)
            payload["Metadata"]["Guid"] = [{"id": f"imdb://tt{9000000 + i}"}]
            payload["Metadata"]["ratingKey"] = str(90000 + i)
            payload["Metadata"]["title"] = f"Counted Movie {i}"
            body = json.dumps(payload).encode()
            before = len(fake.posts("/scrobble/stop"))
            req = urllib.request.Request(f"http://127.0.0.1:{port}/webhook/plextrakt?{TOKEN}", data=body,
                                         method="POST", headers={"Content-Type": "application/json"})
            started = time.time()
            urllib.request.urlopen(req, timeout=10).read()
            deadline = started + 10
            while len(fake.posts("/scrobble/stop")) == before and time.time() < deadline:
                time.sleep(0.0005)
            calls = fake.posts("/scrobble/stop")
            if len(calls) > before:
                samples.append((calls[-1].at - started) * 1000)
        fake.history.clear()
    finally:
        daemon.terminate()
        daemon.wait(20)
        fake.stop()
    return {"events": events, "delivered": len(samples), "median_ms": statistics.median(samples),
            "p90_ms": sorted(samples)[math.ceil(len(samples) * 0.9) - 1]}  # nearest rank


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--loadgen":
        print(json.dumps(asyncio.run(_client_load(sys.argv[2], float(sys.argv[3]), int(sys.argv[4]),
                                                  sys.argv[5], sys.argv[6] if len(sys.argv) > 6 else None))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs of each receiver per payload")
    parser.add_argument("--no-wrk", action="store_true", help="use the aiohttp client even if wrk is installed")
    parser.add_argument("--payloads", default=",".join(PAYLOADS),
                        help=f"comma-separated, of {', '.join(PAYLOADS)} (default: all)")
    args = parser.parse_args()
    payloads = args.payloads.split(",")
    if unknown := [p for p in payloads if p not in PAYLOADS]:
        parser.error(f"--payloads: unknown {', '.join(unknown)} (known: {', '.join(PAYLOADS)})")
    global USE_WRK
    USE_WRK = not args.no_wrk
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="cwhook-bench-") as tmp:
        t = throughput(args.seconds, args.connections, args.rounds, Path(tmp), payloads)
        lat = scrobble_latency(args.events, Path(tmp))
    print(f"machine: {os.cpu_count()} cores, {sys.version.split()[0]}, load generator "
          f"{t[payloads[0]]['bare']['tool']}, {args.connections} connections, {args.seconds:g} s per run, "
          f"{args.rounds} interleaved rounds (median shown)")
    labels = {"large": "Plex multipart, 15 KB payload + 20 KB thumbnail",
              "small": "Plex multipart, 1.7 KB payload + 20 KB thumbnail", "jellyfin": "Jellyfin JSON, 4 KB"}
    for size in payloads:
        r = t[size]
        figures = ", ".join(f"{name} {r[name]['rps']:.0f} req/s (p99 {r[name]['p99_ms']:.1f} ms)"
                            for name in ("floor", "bare", "daemon"))
        print(f"[{labels[size]}] {figures}: daemon/floor {r['daemon_per_floor']:.2f}, "
              f"daemon/bare {r['daemon_per_bare']:.2f}")
    rss = [f"{name} {t['idle_rss_mb'][name]:.1f} / {t['rss_after_mb'][name]:.1f} MB"
           for name in ("floor", "bare", "daemon")]
    print("RSS idle / after the runs: " + ", ".join(rss))
    print(f"media.scrobble POST -> /scrobble/stop on the fake: median {lat['median_ms']:.1f} ms, "
          f"p90 {lat['p90_ms']:.1f} ms over {lat['delivered']}/{lat['events']} events")
    print(f"benchmark took {time.time() - started:.0f} s")
    print("JSON " + json.dumps({"throughput": t, "latency": lat}))


if __name__ == "__main__":
    main()
