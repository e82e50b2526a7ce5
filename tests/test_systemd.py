"""The systemd unit: it verifies, and it says what the contract asks for."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNIT = ROOT / "systemd" / "cwhook.service"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def test_unit_settings() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["User"] == "cwhook"
    assert int(service["WatchdogSec"]) > 0
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes"),
                       ("PrivateTmp", "yes"), ("StateDirectory", "cwhook"), ("ReadWritePaths", "/etc/cwhook")]:
        assert service[key] == value, key
    assert "AF_UNIX" in service["RestrictAddressFamilies"]  # sd_notify needs it
    assert "@system-service" in UNIT.read_text()
    assert service["Environment"] == "CWHOOK_CONFIG=/etc/cwhook/cwhook.yml"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is installed by .ci/run")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify needs the ExecStart binary to exist: point it at this environment's cwhook
    script = shutil.which("cwhook") or str(Path(sys.executable).parent / "cwhook")
    copy = tmp_path / "cwhook.service"
    copy.write_text(UNIT.read_text().replace("/opt/cwhook/bin/cwhook", script))
    out = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "cwhook.service" not in out.stderr, out.stderr
