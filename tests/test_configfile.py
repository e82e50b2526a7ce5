"""Rewriting the config file: owner and group kept, never from a half-written read, errors with the fix."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from cwhook.config import file as configfile
from cwhook.config import settle
from cwhook.config.file import ConfigFiles, ConfigWriteError, write_atomic, write_failure
from cwhook.config.schema import load_config

FULL = """\
# hand-written
server:
  port: 8790   # mine
webhooks:
  plex:
    token: "plex-token-0123456789abcdef"
trakt:
  api_url: http://fake-trakt.invalid
  client_id: my-client-id
  client_secret: my-client-secret
  access_token: ""
state:
  dir: /var/lib/cwhook
logging:
  level: debug
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")


def fresh(tmp_path: Path, text: str = FULL, age: float = 5.0) -> Path:
    """The file as if written `age` seconds ago (a rewrite waits for a file that just changed)."""
    path = tmp_path / "cwhook.yml"
    path.write_text(text)
    then = time.time() - age
    os.utime(path, (then, then))
    return path


# --- owner, group, mode ---------------------------------------------------------------------------


@needs_root
def test_root_rewriting_another_users_file_keeps_owner_group_and_mode(tmp_path: Path) -> None:
    files = ConfigFiles()  # this test's process
    path = fresh(tmp_path)
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o640)
    files.update_file(path, {("trakt", "access_token"): "new"})
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o640)
    lock = path.with_name("cwhook.yml.lock").stat()
    assert (lock.st_uid, lock.st_gid) == (65534, 65534)  # the service user can take the lock too
    assert yaml.safe_load(path.read_text())["trakt"]["access_token"] == "new"


@needs_root
def test_only_the_group_differs(tmp_path: Path) -> None:
    files = ConfigFiles()  # this test's process
    path = fresh(tmp_path)
    os.chown(path, 0, 65534)
    files.update_file(path, {("trakt", "access_token"): "new"})
    assert (path.stat().st_uid, path.stat().st_gid) == (0, 65534)


def test_an_owner_that_cannot_be_kept_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = ConfigFiles()  # this test's process
    path = fresh(tmp_path)
    before = path.read_bytes()
    real = os.fstat

    def other_owner(fd: int) -> Any:  # the temp file seems to belong to someone else than the config
        st = real(fd)
        return os.stat_result((st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid + 1, st.st_gid,
                               st.st_size, st.st_atime, st.st_mtime, st.st_ctime))

    def denied(fd: int, uid: int, gid: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(configfile.os, "fstat", other_owner)
    monkeypatch.setattr(configfile.os, "fchown", denied)
    with pytest.raises(ConfigWriteError, match=r"could not keep that owner.*Fix: run the command as"):
        files.update_file(path, {("trakt", "access_token"): "new"})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_symlinked_config_rewrites_the_target(tmp_path: Path) -> None:
    files = ConfigFiles()  # this test's process
    target = fresh(tmp_path)
    link = tmp_path / "link.yml"
    link.symlink_to(target)
    files.update_file(link, {("trakt", "access_token"): "new"})
    assert link.is_symlink()
    assert yaml.safe_load(target.read_text())["trakt"]["access_token"] == "new"


@pytest.mark.parametrize(("err", "words"), [
    (13, "the directory {d} is not writable by user"),
    (30, "{d} is on a read-only file system; nothing was changed. Fix: make {d} writable (under systemd: "
         "list it in ReadWritePaths= of the unit)"),
    (28, "no space left for {d}"),
])
def test_write_failures_name_the_directory_and_the_fix(tmp_path: Path, err: int, words: str) -> None:
    path = tmp_path / "c.yml"
    message = str(write_failure(path, OSError(err, os.strerror(err), str(tmp_path / ".c.yml.x.tmp"))))
    assert message.startswith(f"cannot write {path}: ")
    assert words.format(d=tmp_path) in message
    assert ".tmp" not in message


# --- never from a half-written read ---------------------------------------------------------------


def test_a_read_lacking_sections_is_not_the_base_of_a_rewrite(tmp_path: Path) -> None:
    files = ConfigFiles()  # this test's process
    path = fresh(tmp_path)
    files.remember(load_config(path))
    truncated = FULL.split("trakt:")[0]
    path.write_text(truncated)  # an editor half-way through writing it in place

    def finish() -> None:
        time.sleep(0.6)
        path.write_text(FULL)

    writer = threading.Thread(target=finish)
    writer.start()
    files.update_file(path, {("trakt", "access_token"): "new"})
    writer.join()
    data = yaml.safe_load(path.read_text())
    assert data["trakt"] == {"api_url": "http://fake-trakt.invalid", "client_id": "my-client-id",
                             "client_secret": "my-client-secret", "access_token": "new"}
    assert data["state"] == {"dir": "/var/lib/cwhook"} and data["logging"] == {"level": "debug"}


@pytest.mark.parametrize(("text", "words"), [
    (FULL.split("state:")[0], "it lacks logging, state, which it had when cwhook last read it whole"),
    (FULL + " port: 1\n", "it is not valid YAML (line 16)"),
    (FULL.replace("  level: debug\n", "  level: debug\n  level: info\n"),
     "logging.level is there twice (lines 15 and 16)"),
])
def test_gives_up_loudly_after_waiting(tmp_path: Path, text: str, words: str) -> None:
    files = ConfigFiles()  # this test's process
    path = fresh(tmp_path)
    files.remember(load_config(path))
    fresh(tmp_path, text)
    started = time.monotonic()
    with pytest.raises(ConfigWriteError) as info:
        files.update_file(path, {("trakt", "access_token"): "new"}, wait=0.5)
    assert time.monotonic() - started >= 0.5
    message = str(info.value)
    assert message.startswith(f"{path} was not rewritten, nothing was changed: ")
    assert words in message and "Waited 0.5 s" in message and "check-config" in message
    assert path.read_text() == text


def test_a_file_that_just_changed_is_read_again_once_settled(tmp_path: Path) -> None:
    files = ConfigFiles()  # this test's process
    path = fresh(tmp_path, age=0)
    started = time.monotonic()
    files.update_file(path, {("trakt", "access_token"): "new"})
    assert 0.5 <= time.monotonic() - started < 3
    started = time.monotonic()
    files.update_file(path, {("trakt", "access_token"): "newer"})  # our own write needs no settling
    assert time.monotonic() - started < 0.5


WRITER = r"""
import os, sys, time
path, rounds = sys.argv[1], int(sys.argv[2])
pauses = [float(p) for p in sys.argv[3].split(",")]
text = open(path, "rb").read()
lines = text.splitlines(keepends=True)
for _ in range(rounds):
    with open(path, "r+b") as fh:  # in place, as sudoedit, nano or `cat >` do
        fh.truncate(0)
        for n, i in enumerate(range(0, len(lines), 4)):
            fh.write(b"".join(lines[i:i + 4]))
            fh.flush()
            time.sleep(pauses[n % len(pauses)])
"""


@pytest.mark.slow
def test_a_slow_writer_rewriting_in_place_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real process rewrites the file in place, slowly (pausing longer than a second half-way),
    while tokens are written: every file cwhook writes is whole, nothing of the user's is lost."""
    files = ConfigFiles()  # this test's process
    path = fresh(tmp_path)
    files.remember(load_config(path))
    written: list[bytes] = []
    real_write = configfile.write_atomic

    def recording(p: Path, data: bytes, mode: int | None = None) -> None:
        written.append(data)
        real_write(p, data, mode)

    monkeypatch.setattr(configfile, "write_atomic", recording)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "2", "0.1,1.3"])
    updates = 0
    while writer.poll() is None:
        files.update_file(path, {("trakt", "access_token"): f"token-{updates}"})
        updates += 1
        time.sleep(0.05)
    assert writer.wait(30) == 0
    assert updates >= 2 and written
    expected = yaml.safe_load(FULL)
    expected["trakt"].pop("access_token")
    for data in written:
        got = yaml.safe_load(data)
        got["trakt"].pop("access_token")
        assert got == expected
        assert data.decode().startswith("# hand-written\nserver:\n  port: 8790   # mine\n")
    files.update_file(path, {("trakt", "access_token"): "last"})
    final = yaml.safe_load(path.read_text())
    assert final["trakt"]["client_secret"] == "my-client-secret" and final["trakt"]["access_token"] == "last"
    assert load_config(path).trakt.api_url == "http://fake-trakt.invalid"


def test_write_atomic_new_file_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_atomic(tmp_path / "x", b"hi")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x").stat().st_mode) == 0o600


def test_rotate_waits_for_an_editor_that_is_still_saving(tmp_path: Path) -> None:
    """`rotate-tokens` while an editor has written half the file (it does not parse yet):
    the command waits for the whole file, and the editor's change and the new tokens both stay."""
    from tests.conftest import config_text

    path = tmp_path / "cwhook.yml"
    whole = config_text(8999, tmp_path / "state")
    path.write_text(whole)
    os.utime(path, (time.time() - 10, time.time() - 10))
    edited = whole.replace("level: debug", "level: info")
    path.write_text(edited[: edited.index("  jellyfin:") + 5])  # half-way: does not parse

    def finish() -> None:
        time.sleep(1.5)
        path.write_text(edited)

    editor = threading.Thread(target=finish)
    editor.start()
    out = subprocess.run([sys.executable, "-m", "cwhook", "rotate-tokens", "plex", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    editor.join()
    assert out.returncode == 0, out.stderr
    text = path.read_text()
    assert "level: info" in text and "jellyfin-token-0123456789ab" in text
    assert "plex-token-0123456789abcdef" not in text  # rotated


EDITOR = r"""
import sys, time
path, cut, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
data = open(path, "rb").read()
level = b"level: info" if b"level: debug" in data else b"level: debug"
data = data.replace(b"level: debug", b"@").replace(b"level: info", b"@").replace(b"@", level)
with open(path, "r+b") as fh:  # in place, as sudoedit, nano or `cat >` do
    fh.truncate(0)
    fh.write(data[:cut])
    fh.flush()
    print(level.decode(), flush=True)  # half-way: now it pauses
    time.sleep(pause)
    fh.write(data[cut:])
    fh.flush()
"""


# `cwhook rotate-tokens plex -c PATH` in a fresh process, started ahead and told when to run (its
# start-up, half a second and more on a loaded machine, would otherwise decide when it reads).
ROTATE = r"""
import sys
from cwhook.cli.main import main
print("ready", flush=True)
sys.stdin.readline()
sys.exit(main(["rotate-tokens", "plex", "-c", sys.argv[1]]))
"""


def _cuts(text: str) -> list[int]:
    """Where an editor's pause leaves a file that may still parse: at line ends, after `key: `,
    and inside a value or a comment (a file cut there still parses, with a shorter value)."""
    out, offset = [], 0
    for line in text.splitlines(keepends=True):
        if ": " in line:
            start = line.index(": ") + 2
            out.append(offset + start)
            if len(line.rstrip("\n")) - start > 2:
                out.append(offset + (start + len(line.rstrip("\n"))) // 2)
        offset += len(line.encode())
        out.append(offset)
    return [c for c in out if 0 < c < len(text.encode())]


def _rotate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cwhook", "rotate-tokens", "plex", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)


def _editor_rounds(directory: Path, round_numbers: range, seed: int) -> list[tuple[str, Any]]:
    """Rounds of an editor pausing mid-save while `cwhook rotate-tokens` runs, on this directory's
    own file; what went wrong in each (the file cut short, or the command refusing)."""
    import random

    from cwhook.config.file import key_paths
    from tests.conftest import config_text

    rng = random.Random(seed)
    directory.mkdir()
    path = directory / "cwhook.yml"
    path.write_text(config_text(8999, directory / "state"))
    os.utime(path, (time.time() - 10, time.time() - 10))
    first = _rotate(path)
    assert first.returncode == 0, first.stderr  # a rewrite records the keys of the whole file
    whole = key_paths(yaml.compose(path.read_text()))
    wrong: list[tuple[str, Any]] = []

    def but_tokens(text: str) -> list[str]:  # the rotation changes a token line, nothing else
        return [line for line in text.splitlines() if not line.strip().startswith("token:")]

    for round_no in round_numbers:
        before = path.read_text()
        new_level = "level: info" if "level: debug" in before else "level: debug"
        intended = before.replace("level: debug", "@").replace("level: info", "@").replace("@", new_level)
        cuts = _cuts(intended)  # in the editor's bytes (its level is a byte shorter or longer)
        # every other round inside the last lines, taking their five cuts in turn from the end
        cut = rng.choice(cuts) if round_no % 2 else cuts[-1 - round_no // 2 % 5]
        rotate = subprocess.Popen([sys.executable, "-c", ROTATE, str(path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert rotate.stdout is not None and rotate.stdout.readline() == "ready\n"
        editor = subprocess.Popen([sys.executable, "-c", EDITOR, str(path), str(cut), "1.2"],
                                  stdout=subprocess.PIPE, text=True)
        assert editor.stdout is not None
        level = editor.stdout.readline().strip()
        time.sleep(rng.uniform(0.0, 0.9))  # a moment in the pause: before the second it waits for, or in it
        stdout, stderr = rotate.communicate("go\n", timeout=60)
        out = subprocess.CompletedProcess(rotate.args, rotate.returncode, stdout, stderr)
        assert editor.wait(30) == 0
        text = path.read_text()
        try:
            keys = key_paths(yaml.compose(text))
        except yaml.YAMLError:
            keys = frozenset()
        if not keys >= whole or level not in text or but_tokens(text) != but_tokens(intended):
            wrong.append(("truncated", (round_no, cut, text[-60:])))
        if out.returncode != 0:
            wrong.append(("refused", (round_no, out.stderr)))
        assert "Traceback" not in out.stderr
    return wrong


EDITOR_LANES = 3


@pytest.mark.slow
def test_rotate_tokens_while_an_editor_pauses_mid_save_never_truncates_the_file(tmp_path: Path) -> None:
    """An editor rewrites the file in place and pauses 1.2 s half-way (longer than the second a
    rewrite waits for a file to settle) while `cwhook rotate-tokens` runs, in a fresh process that
    never saw the whole file. Each round: the file ends whole, with the editor's change.

    A round is the editor's pause and the second after it, mostly waiting: six rounds run as three
    lanes side by side, each on its own file, the command started ahead and told to run at a
    moment of the pause. Three rounds cut the last lines, their cuts taken in turn from the end:
    inside the last value, right after its key, at the end of the line before (a file that parses
    and lacks only the last key: the record of keys alone holds it back); three cut anywhere.
    CWHOOK_EDITOR_ROUNDS=N runs N rounds (a soak: 30 or more)."""
    from concurrent.futures import ThreadPoolExecutor

    rounds = int(os.environ.get("CWHOOK_EDITOR_ROUNDS", "6"))
    lanes = min(EDITOR_LANES, rounds)
    with ThreadPoolExecutor(lanes) as pool:
        wrong = [w for ws in pool.map(lambda k: _editor_rounds(tmp_path / f"lane{k}", range(k, rounds, lanes), 4 + k),
                                      range(lanes)) for w in ws]
    truncated = [what for kind, what in wrong if kind == "truncated"]
    refused = [what for kind, what in wrong if kind == "refused"]
    assert truncated == [], f"{len(truncated)} of {rounds} rounds left the file cut short: {truncated}"
    assert refused == []  # the editor finished well within the 10 s a rewrite waits


def test_a_fresh_process_compares_with_the_record_not_with_its_own_read(tmp_path: Path) -> None:
    """The record of the last whole version is on disk: a process that only ever saw the partial
    file (and remembered it) still refuses to make it the base of a rewrite."""
    files = ConfigFiles()  # this test's process
    path = fresh(tmp_path)
    files.remember(load_config(path), deliberate=True, create=True)  # as a daemon start does
    files = ConfigFiles()  # a new process
    partial = FULL[:FULL.index("client_secret")]  # parses: `client_id` is its last key
    fresh(tmp_path, partial)
    files.remember(load_config(path))  # what the command's own read found: lowers nothing
    with pytest.raises(ConfigWriteError, match=r"it lacks logging, state, trakt.access_token, "
                                               r"trakt.client_secret, which it had when cwhook last read it"):
        files.update_file(path, {("webhooks", "plex", "token"): "new"}, wait=0.3)
    assert path.read_text() == partial
    record = path.with_name("cwhook.yml.keys")
    assert stat.S_IMODE(record.stat().st_mode) == 0o600 and "my-client" not in record.read_text()


def test_a_file_a_command_only_read_gets_no_record_beside_it(tmp_path: Path) -> None:
    path = fresh(tmp_path)
    out = subprocess.run([sys.executable, "-m", "cwhook", "check-config", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout == "config OK\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwhook.yml"]


def test_a_removal_confirmed_by_check_config_is_rewritten(tmp_path: Path) -> None:
    files = ConfigFiles()  # this test's process
    path = fresh(tmp_path)
    files.remember(load_config(path), deliberate=True, create=True)  # as a daemon start does
    fresh(tmp_path, FULL.replace("logging:\n  level: debug\n", ""))  # removed on purpose
    with pytest.raises(ConfigWriteError, match=r"If you removed them on purpose, run `cwhook check-config"):
        files.update_file(path, {("trakt", "access_token"): "new"}, wait=0.3)
    out = subprocess.run([sys.executable, "-m", "cwhook", "check-config", "-c", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("config OK\n(removed since cwhook last read it whole: logging; taken as "
                                 "deliberate"), out
    files = ConfigFiles()  # a new process
    files.update_file(path, {("trakt", "access_token"): "new"}, wait=0.3)
    assert yaml.safe_load(path.read_text())["trakt"]["access_token"] == "new"


def test_a_file_cut_inside_its_last_value_is_not_rewritten_until_it_settles(tmp_path: Path) -> None:
    """An editor that pauses mid-save inside the last line leaves a file that parses and has
    every key, with a value cut short and no final newline. A rewrite takes such a file only
    once it has not changed for UNTERMINATED_SETTLED seconds; meanwhile the editor finishes."""
    files = ConfigFiles()  # this test's process
    path = fresh(tmp_path)
    files.remember(load_config(path), deliberate=True, create=True)
    cut = FULL.rstrip("\n")[:-3]  # the last value cut short, as a paused editor leaves it
    fresh(tmp_path, cut, age=1.5)  # older than the second a terminated file needs to settle
    with pytest.raises(ConfigWriteError, match="being written right now"):
        files.update_file(path, {("webhooks", "plex", "token"): "new"}, wait=0.3)
    assert path.read_text() == cut
    fresh(tmp_path, FULL, age=0.0)  # the editor finished its save
    files.update_file(path, {("webhooks", "plex", "token"): "new"}, wait=3)
    assert path.read_text() == FULL.replace("plex-token-0123456789abcdef", "new")
    fresh(tmp_path, FULL.rstrip("\n"), age=settle.UNTERMINATED_SETTLED + 1)  # a file without a
    files.update_file(path, {("webhooks", "plex", "token"): "newer"}, wait=0.3)  # final newline, long still
    assert "newer" in path.read_text()


def test_the_record_is_of_the_file_on_disk_even_when_it_changed_since_the_read(tmp_path: Path) -> None:
    """``remember`` takes the key paths a config carries from its own read only while the file
    still holds that text: a file changed in between is parsed again."""
    from cwhook.config.keyrecord import keys_of_text, read_record

    path = fresh(tmp_path)
    config = load_config(path)
    assert config.keys == keys_of_text(path.read_text()) and config.source == path.read_text()
    ConfigFiles().remember(config, deliberate=True, create=True)
    assert read_record(path) == config.keys
    shorter = FULL[:FULL.index("client_secret")]  # written after the read, before remember
    fresh(tmp_path, shorter)
    ConfigFiles().remember(config, deliberate=True, create=True)
    assert read_record(path) == keys_of_text(shorter) != config.keys


def test_merge_keys_read_as_before(tmp_path: Path) -> None:
    """The data is made from the one composed node after every reader of the node (making it
    flattens ``<<`` merge keys in the node itself): the key paths keep the ``<<`` the file has,
    and the values are what yaml.safe_load gives."""
    from cwhook.config.load import _data_of
    from cwhook.config.yamlerrors import key_paths

    text = FULL.replace('  access_token: ""\n', '  access_token: ""\n  accounts:\n    anna: &a\n'
                        '      users: ["plex:anna"]\n    bob:\n      <<: *a\n')
    config = load_config(fresh(tmp_path, text))
    assert config.keys == key_paths(yaml.compose(text)) and ("trakt", "accounts", "bob", "<<") in config.keys
    assert config.trakt.accounts["bob"].users == config.trakt.accounts["anna"].users
    assert _data_of(yaml.compose(text)) == yaml.safe_load(text)
