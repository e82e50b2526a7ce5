"""Memory after a long fuzz: a real `cwhook run`, the CI fuzz (tests/fuzzkit.py) in rounds, its RSS
and the rules' session count after each round. The contract: under 100 MB after 300,000 requests.

    python bench/fuzz_rss.py [--per-round 25000] [--rounds 3]

Each round sends ``per-round`` hostile requests to each webhook endpoint (a new seed each
round, so new sessions, users and items keep coming). About 8 minutes for 300,000 on 2 cores
(``--per-round 25000 --rounds 3`` with four endpoints).
Everything runs on 127.0.0.1 and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import fuzzkit  # noqa: E402
from tests.conftest import Daemon, config_text, free_port  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-round", type=int, default=25000, help="requests per endpoint per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        path = tmp / "cwhook.yml"
        path.write_text(config_text(port, tmp / "state").replace("level: debug", "level: warning"))
        daemon = Daemon(path, port).start()
        assert daemon.proc is not None
        try:
            print(f"start: RSS {rss_mb(daemon.proc.pid):.1f} MB", flush=True)
            started, total = time.monotonic(), 0
            for r in range(args.rounds):
                tally = asyncio.run(fuzzkit.fuzz(port, args.per_round, 99 + r))
                total += args.per_round * len(fuzzkit.PATHS)
                health = daemon.health()
                print(f"after {total} requests: RSS {rss_mb(daemon.proc.pid):.1f} MB, sessions "
                      f"{health['sessions']}, 5xx {len(tally.fivexx)} ({time.monotonic() - started:.0f} s)",
                      flush=True)
        finally:
            daemon.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
