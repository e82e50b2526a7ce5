from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cwhook.sources.registry import SOURCES
from tests.faketrakt import FakeTrakt

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Where bytecode is not written (PYTHONDONTWRITEBYTECODE), each of the eight xdist workers
    rewrites the assertions of every test module and compiles it, about 2 s of CPU each, and every
    `cwhook` process the tests start compiles the package again (0.1 s each, ~270 processes). So the
    controller, before it starts the workers, collects once with bytecode written: the workers and
    the processes they start read the compiled files, which land in the `__pycache__/` folders of
    tests/ and cwhook/ (git ignores them). Measured cold on two cores: eight workers up and collected
    in 10-13 s wall and 15-19 s CPU, against 15-17 s and 28-32 s without."""
    if (not sys.dont_write_bytecode or os.environ.get("PYTEST_XDIST_WORKER")
            or not config.getoption("numprocesses", None)):
        return
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider",
                    str(ROOT / "tests")], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False, timeout=120)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tests go first (a stable sort: the order is otherwise kept): the workers then fill
    the rest of the run with short tests, and no test of several seconds starts last and becomes
    the run's tail. Every worker sorts alike, so their collections still agree."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def fixture_json(name: str) -> dict[str, Any]:
    return json.loads(fixture_bytes(name))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fake_trakt() -> Iterator[FakeTrakt]:
    fake = FakeTrakt().start()
    try:
        yield fake
    finally:
        fake.stop()


NOBODY = 65534
AS_NOBODY = ("setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups")


def _can_run_as_nobody() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run([*AS_NOBODY, sys.executable, "-c", "import cwhook"], capture_output=True)
    return probe.returncode == 0


needs_nobody = pytest.mark.skipif(not _can_run_as_nobody(),
                                  reason="needs root and setpriv to run a command as another user")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="cwhook-test-", dir="/tmp"))
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-R", "-i", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


TOKENS = {"plex": "plex-token-0123456789abcdef", "jellyfin": "jellyfin-token-0123456789ab",
          "emby": "emby-token-0123456789abcdef", "tautulli": "tautulli-token-0123456789ab"}


def config_text(port: int, state_dir: Path, trakt_url: str = "http://127.0.0.1:9",
                access_token: str = "", refresh_token: str = "", expires_at: int = 0,
                client_id: str = "test-client-id", client_secret: str = "test-secret",
                extra_scrobble: str = "", plex_extra: str = "") -> str:
    return f"""# test config
server:
  host: 127.0.0.1
  port: {port}   # chosen by the test
webhooks:
  plex:
    token: "{TOKENS['plex']}"
{plex_extra}  jellyfin:
    token: '{TOKENS['jellyfin']}'
  emby:
    token: {TOKENS['emby']}
  tautulli:
    token: {TOKENS['tautulli']}
scrobble:
  pause_debounce_seconds: 1
{extra_scrobble}trakt:
  api_url: {trakt_url}
  oauth_url: {trakt_url}
  client_id: {client_id}
  client_secret: {client_secret}
  access_token: "{access_token}"
  refresh_token: "{refresh_token}"
  expires_at: {expires_at}
state:
  dir: {state_dir}
logging:
  level: debug
  format: json
"""


class Daemon:
    """A real `cwhook run` process on a free port."""

    def __init__(self, config_path: Path, port: int, args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.port = port
        self.args = args
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = config_path.parent / f"daemon-{port}.log"
        self.out_path = config_path.parent / f"daemon-{port}.out"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> Daemon:
        env = dict(os.environ)
        env.pop("CWHOOK_CONFIG", None)
        env.update(self.env or {})
        with open(self.log_path, "ab") as err, open(self.out_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cwhook", "run", "-c", str(self.config_path), *self.args],
                stdout=out, stderr=err, env=env, cwd=self.config_path.parent)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.logs()}")
            try:
                self.health()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("daemon did not come up: " + self.logs())

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        req = urllib.request.Request(self.base + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read()), dict(resp.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read()), dict(exc.headers)

    def post(self, server: str, body: bytes, content_type: str = "application/json",
             token: str | None = None) -> tuple[int, dict[str, Any]]:
        path = SOURCES[server].path
        status, data, _ = self.request("POST", f"{path}?{token or TOKENS[server]}", body,
                                       {"Content-Type": content_type})
        return status, data

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.base + "/healthz", timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("daemon did not stop in time") from None


def wait_for(predicate: Callable[[], Any], timeout: float = 10, interval: float = 0.05) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def make(text_or_kwargs: str | None = None, args: tuple[str, ...] = (), start: bool = True,
             env: dict[str, str] | None = None, **kwargs: Any) -> Daemon:
        port = free_port()
        path = tmp_path / "cwhook.yml"
        if text_or_kwargs is None:
            text_or_kwargs = config_text(port, tmp_path / "state", **kwargs)
        else:
            text_or_kwargs = text_or_kwargs.replace("{port}", str(port))
        path.write_text(text_or_kwargs)
        d = Daemon(path, port, args, env)
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in started:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()
