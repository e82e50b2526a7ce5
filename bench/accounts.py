"""Benchmark: many Trakt accounts in one file cost nothing per webhook and little at rest.

    python bench/accounts.py [--accounts 1000] [--seconds 5] [--idle 20]

Runs `cwhook run` twice, as a service runs it (default log level, logs written to a file, dry-run
as it is until Trakt is authorized): once with one account, once with ``--accounts`` accounts
(each with its own `users`). For each it measures
- start to the first `/healthz` answer;
- idle RSS and idle CPU (share of one core) over ``--idle`` seconds after start;
- CPU per accepted webhook (the daemon's utime + stime from /proc over a wrk run, divided by the
  requests answered), with the Plex user routed to one account in the middle of the file.
Prints both and their ratio. Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import JELLYFIN_TOKEN, OTHER_TOKENS, TOKEN, free_port, load, rss_mb, wait_up

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def config(port: int, state: Path, accounts: int) -> str:
    lines = [f"""server:
  host: 127.0.0.1
  port: {port}
webhooks:
  plex:
    token: {TOKEN}
  jellyfin:
    token: {JELLYFIN_TOKEN}
{OTHER_TOKENS}trakt:
  client_id: bench-client-id
  client_secret: bench-secret
"""]
    if accounts > 1:
        lines.append('  users: ["plex:nobody-at-all"]\n  accounts:\n')
        for i in range(1, accounts):
            lines.append(f'    a{i:05d}:\n      users: ["plex:viewer{i:05d}"]\n')
    lines.append(f"""state:
  dir: {state}
logging:
  level: info
  format: json
""")
    return "".join(lines)


def log_lines(path: Path) -> list[dict[str, Any]]:
    """The daemon's JSON log lines, read as JSON (not matched as text: how a line is spaced is
    the renderer's business)."""
    out = []
    for text in path.read_text().splitlines():
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict):
            out.append(line)
    return out


def measure(accounts: int, seconds: float, idle: float, tmp: Path) -> dict[str, Any]:
    port = free_port()
    cfg = tmp / f"accounts-{accounts}.yml"
    cfg.write_text(config(port, tmp / f"state-{accounts}", accounts))
    log = (tmp / f"daemon-{accounts}.log").open("w")
    started = time.perf_counter()
    daemon = subprocess.Popen([sys.executable, "-m", "cwhook", "run", "-c", str(cfg)],
                              stdout=log, stderr=log, cwd=tmp)
    try:
        wait_up(port, timeout=60)
        start_s = time.perf_counter() - started
        time.sleep(1.0)  # let the start settle before the idle window
        cpu0 = cpu_seconds(daemon.pid)
        time.sleep(idle)
        idle_cpu = (cpu_seconds(daemon.pid) - cpu0) / idle
        idle_rss = rss_mb(daemon.pid)
        # The user of the account in the middle of the file (with one account: anyone).
        user = f"viewer{accounts // 2:05d}" if accounts > 1 else "viewer00000"
        cpu0 = cpu_seconds(daemon.pid)
        result = load(f"http://127.0.0.1:{port}/webhook/plextrakt?{TOKEN}", seconds, 8, "small", user)
        time.sleep(0.5)  # the last decisions and log lines
        per_request = (cpu_seconds(daemon.pid) - cpu0) / max(1, result["requests"])
    finally:
        daemon.terminate()
        daemon.wait(30)
        log.close()
    # The webhooks went where they should (a 200 ignored would be cheaper and still count as 2xx):
    account = f"a{accounts // 2:05d}" if accounts > 1 else "default"
    if not any(line.get("event") == "decision" and line.get("account") == account
               for line in log_lines(tmp / f"daemon-{accounts}.log")):
        raise SystemExit(f"no decision for account {account}: the webhooks were not routed to it")
    return {"accounts": accounts, "start_s": start_s, "idle_rss_mb": idle_rss, "idle_cpu": idle_cpu,
            "cpu_us_per_webhook": per_request * 1e6, "requests": result["requests"], "rps": result["rps"],
            "non2xx": result.get("non2xx", 0)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--idle", type=float, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cwhook-bench-accounts-") as tmp:
        one = measure(1, args.seconds, args.idle, Path(tmp))
        many = measure(args.accounts, args.seconds, args.idle, Path(tmp))
    for r in (one, many):
        print(f"{r['accounts']:>5} account(s): start->/healthz {r['start_s']:.2f} s,"
              f" idle RSS {r['idle_rss_mb']:.1f} MB,"
              f" idle CPU {r['idle_cpu'] * 100:.2f} % of a core, {r['cpu_us_per_webhook']:.0f} us CPU per webhook"
              f" ({r['requests']} requests, {r['rps']:.0f}/s, non-2xx {r['non2xx']})")
    print(f"CPU per webhook, {args.accounts} accounts / 1 account: "
          f"{many['cpu_us_per_webhook'] / one['cpu_us_per_webhook']:.2f}")


if __name__ == "__main__":
    main()
