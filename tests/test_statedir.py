"""The state dir is nobody else's: no link followed, no other user's file written, no mode left open.

Run as root (as CI does) these play the attack: another user plants links or files in a state
dir that everybody may write, and waits for cwhook to write its PID or a Trakt pair into them.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from cwhook.state.tokenjournal import Pair, TokenJournal
from cwhook.system.statedir import StateDirError, UnsafeStateFile, ensure_private_dir
from tests.conftest import Daemon, config_text

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="files of another user need root to make")


def victim(tmp_path: Path) -> Path:
    """Another user's world-readable file, as the attacker would choose it."""
    path = tmp_path / "victim.txt"
    path.write_bytes(b"precious\n")
    path.chmod(0o644)
    if os.geteuid() == 0:
        os.chown(path, NOBODY, NOBODY)
    return path


def open_state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    return state


def start_on(daemon_factory: Callable[..., Daemon], state: Path) -> Daemon:
    return daemon_factory(config_text(0, state).replace("port: 0", "port: {port}"), start=False)


@pytest.mark.slow
def test_a_link_as_daemon_lock_truncates_nothing(daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    target = victim(tmp_path)
    state = open_state(tmp_path)
    (state / "daemon.lock").symlink_to(target)  # the lock is the database file now, not this name
    d = start_on(daemon_factory, state).start()
    assert d.health()["status"] in ("ok", "degraded")
    assert d.stop() == 0
    assert target.read_bytes() == b"precious\n"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["trakt-tokens.jsonl", "cwhook.sqlite3", "cwhook.sqlite3-wal"])
def test_a_link_in_the_state_dir_is_refused_at_start(daemon_factory: Callable[..., Daemon], tmp_path: Path,
                                                     name: str) -> None:
    target = victim(tmp_path)
    state = open_state(tmp_path)
    (state / name).symlink_to(target)
    d = start_on(daemon_factory, state)
    d.start(wait=False)
    assert d.proc is not None and d.proc.wait(30) == 1
    err = d.logs()
    assert f"cwhook: state.dir {state}: {name} is a symbolic link (to {target}); cwhook never follows" in err
    assert f"Fix: remove it (`rm {state / name}`)" in err and "Traceback" not in err
    assert target.read_bytes() == b"precious\n"


@needs_root
def test_a_link_planted_while_running_never_receives_a_token_pair(tmp_path: Path) -> None:
    target = victim(tmp_path)
    state = tmp_path / "state"
    ensure_private_dir(state)
    journal = TokenJournal(state)
    journal.append("default", Pair("a1", "r1", 100))
    journal.path.unlink()
    journal.path.symlink_to(target)
    with pytest.raises(UnsafeStateFile, match=r"trakt-tokens.jsonl is a symbolic link"):
        journal.append("default", Pair("a2", "r2", 200))
    with pytest.raises(UnsafeStateFile):
        journal.newest("default")  # nor is a pair read from a file somebody else controls
    assert target.read_bytes() == b"precious\n"


@needs_root
def test_another_users_file_never_receives_a_token_pair(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ensure_private_dir(state)
    planted = state / "trakt-tokens.jsonl"
    planted.write_bytes(b"")
    planted.chmod(0o644)
    os.chown(planted, NOBODY, NOBODY)
    with pytest.raises(UnsafeStateFile, match=r"trakt-tokens.jsonl belongs to user nobody, not to root"):
        TokenJournal(state).append("default", Pair("a1", "r1", 100))
    assert planted.read_bytes() == b""


@pytest.mark.slow
def test_a_state_dir_everybody_may_write_is_made_private_with_a_warning(
        daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    state = open_state(tmp_path)
    d = start_on(daemon_factory, state).start()
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    fixed = [e for e in d.log_events() if e.get("event") == "state_dir_mode_fixed"]
    assert len(fixed) == 1 and fixed[0]["level"] == "warning" and fixed[0]["was"] == "0777", d.logs()
    assert d.stop() == 0


@needs_root
def test_another_users_state_dir_that_others_can_write_is_refused(tmp_path: Path) -> None:
    state = open_state(tmp_path)
    os.chown(state, NOBODY, NOBODY)
    with pytest.raises(StateDirError, match=r"other users can write it \(mode 0777, owner nobody\)"):
        ensure_private_dir(state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o777  # not ours to change
