"""Instructions per accepted webhook, counted by valgrind: a measure the machine's noise cannot move.

    python bench/instructions.py [--payloads small,jellyfin] [--requests 200,600] [--floor]

On the standard machine two runs of the same code differ by up to 15 % in CPU per request, and a
run's CPU speed can halve for minutes, so a change worth a few percent cannot be seen by timing.
This runs `cwhook run` (as bench/run.py does: default log level, logs written, dry-run) under
valgrind's callgrind, which counts the instructions the process executes, and sends it a number of
webhooks from 32 connections at once; then again with more. The difference divided by the extra
requests is what one webhook costs, start and stop cancelling out. Two runs of the same code agree
within 0.3 % one at a time, within 1.3 % side by side (the batch sizes depend on how the
processes are scheduled). ``--floor`` counts bench/floor.py the same way.

Instructions are not time: system calls are not counted, and code that misses the caches costs
more time per instruction. Compare code with code on one machine; the benchmark (bench/run.py)
remains the measure of speed. Needs valgrind (``apt-get install valgrind``); takes about a minute
per payload.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run import PAYLOADS, config, free_port, path_for, request_body, wait_up  # noqa: E402

CONNECTIONS = 32


async def _send(url: str, size: str, count: int) -> None:
    import aiohttp

    body, ctype = request_body(size)
    left = [count]

    async def one_connection(session: aiohttp.ClientSession) -> None:
        while left[0] > 0:
            left[0] -= 1
            async with session.post(url, data=body, headers={"Content-Type": ctype}) as resp:
                await resp.read()
                if resp.status != 202:
                    raise SystemExit(f"answered {resp.status}, not 202: {await resp.text()}")

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS)) as session:
        await asyncio.gather(*[one_connection(session) for _ in range(CONNECTIONS)])


def count(size: str, requests: int, floor: bool, tmp: Path) -> int:
    """Instructions of one whole run of the receiver that answers ``requests`` webhooks."""
    port = free_port()
    work = Path(tempfile.mkdtemp(dir=tmp))
    if floor:
        command = [sys.executable, str(ROOT / "bench/floor.py"), str(port), str(work / "floor.sqlite3")]
    else:
        (work / "bench.yml").write_text(config(port, work / "state"))
        command = [sys.executable, "-m", "cwhook", "run", "-c", str(work / "bench.yml")]
    log = work / "out.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
                                stdout=out, stderr=out, cwd=work)
        try:
            wait_up(port, 300, proc)  # a Python start under valgrind takes seconds
            time.sleep(1)
            asyncio.run(_send(f"http://127.0.0.1:{port}{path_for(size)}", size, requests))
            time.sleep(1)
        finally:
            proc.send_signal(2)  # SIGINT: both stop cleanly on it
            proc.wait(300)
    found = re.search(r"Collected : (\d+)", log.read_text(errors="replace"))
    if found is None:
        raise SystemExit(f"valgrind reported no count; see {log}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--payloads", default="small,jellyfin,large",
                        help=f"comma-separated, of {', '.join(PAYLOADS)}")
    parser.add_argument("--requests", default="200,600", help="the two run lengths, in webhooks")
    parser.add_argument("--floor", action="store_true", help="count bench/floor.py instead of cwhook")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    few, many = (int(n) for n in args.requests.split(","))
    who = "floor" if args.floor else "cwhook"
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.payloads.split(","):
            short, long = count(size, few, args.floor, Path(tmp)), count(size, many, args.floor, Path(tmp))
            print(f"{who} {size}: {(long - short) / (many - few) / 1000:.1f}k instructions per webhook "
                  f"(runs of {few} and {many}: {short / 1e9:.2f}G, {long / 1e9:.2f}G)", flush=True)


if __name__ == "__main__":
    main()
