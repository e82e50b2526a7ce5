"""Every curl example in docs/ runs against a real daemon and gets the status it promises."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable

import pytest

from tests.conftest import ROOT, TOKENS, Daemon

pytestmark = pytest.mark.slow

EXAMPLE = re.compile(r"^(curl .*?)\s+# expect (\d{3})$")


def examples() -> list[tuple[str, str, int]]:
    found = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for line in page.read_text().splitlines():
            m = EXAMPLE.match(line.strip())
            if m:
                found.append((page.name, m.group(1), int(m.group(2))))
    return found


def test_docs_have_curl_examples_for_every_endpoint() -> None:
    text = " ".join(cmd for _, cmd, _ in examples())
    for path in ("/healthz", "/webhook/plextrakt", "/webhook/jellyfintrakt", "/webhook/embytrakt"):
        assert path in text


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by .ci/run")
def test_every_curl_example(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    env = dict(os.environ, PLEX_TOKEN=TOKENS["plex"], JELLYFIN_TOKEN=TOKENS["jellyfin"],
               EMBY_TOKEN=TOKENS["emby"])
    ran = 0
    for page, command, expected in examples():
        cmd = command.replace("http://localhost:8787", d.base) + " -w '\\n%{http_code}'"
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)
        assert out.returncode == 0, (page, command, out.stderr)
        body, _, status = out.stdout.rpartition("\n")
        assert int(status) == expected, (page, command, out.stdout)
        json.loads(body)  # always JSON
        ran += 1
    assert ran >= 10
