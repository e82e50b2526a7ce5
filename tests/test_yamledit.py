from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from cwhook.config.file import ConfigFiles, write_atomic
from cwhook.config.yamledit import YamlEditError, edit_yaml, format_scalar

UGLY = """\
# cwhook config, hand-written
server:
    host: 127.0.0.1      # only local
    port: 8787
    public_url: 'https://example.net/hooks'   # behind nginx

webhooks:
    plex:
        enabled: yes-no-maybe-not-a-bool-but-untouched
        token: "old-plex-token-0123456789"  # rotate me
        username_whitelist: [alice, "Bob Smith", 'id:42']
        server_uuid_whitelist:
          - abc
          - def
    jellyfin: {enabled: true}
    emby:
        token:
trakt:
    client_id: abc   # the app
    access_token: ''
    expires_at: 0
# trailing comment
"""


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(a) == len(b), "line count changed"
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_only_the_changed_scalars_change_byte_for_byte() -> None:
    out = edit_yaml(UGLY, {
        ("webhooks", "plex", "token"): "new-plex-token-abcdefghijk",
        ("trakt", "access_token"): "acc-123",
        ("trakt", "expires_at"): 1767225600,
    })
    assert changed_lines(UGLY, out) == [
        ('        token: "old-plex-token-0123456789"  # rotate me\n',
         '        token: "new-plex-token-abcdefghijk"  # rotate me\n'),
        ("    access_token: ''\n", "    access_token: 'acc-123'\n"),
        ("    expires_at: 0\n", "    expires_at: 1767225600\n"),
    ]
    data = yaml.safe_load(out)
    assert data["webhooks"]["plex"]["token"] == "new-plex-token-abcdefghijk"
    assert data["trakt"]["expires_at"] == 1767225600


def test_empty_value_gets_a_value_after_the_colon() -> None:
    out = edit_yaml(UGLY, {("webhooks", "emby", "token"): "tok-abcdefghijklmnop"})
    assert changed_lines(UGLY, out) == [("        token:\n", "        token: tok-abcdefghijklmnop\n")]


def test_missing_key_inserted_with_section_indentation() -> None:
    out = edit_yaml(UGLY, {("trakt", "refresh_token"): "ref-1"})
    lines = out.splitlines()
    i = lines.index("    expires_at: 0")
    assert lines[i + 1] == '    refresh_token: "ref-1"'
    assert lines[i + 2] == "# trailing comment"
    # every original line is still there, in order
    assert [line for line in lines if line != '    refresh_token: "ref-1"'] == UGLY.splitlines()


def test_missing_section_appended() -> None:
    text = "server:\n  port: 1\n"
    out = edit_yaml(text, {("trakt", "access_token"): "a", ("trakt", "refresh_token"): "b"})
    assert out == "server:\n  port: 1\ntrakt:\n  access_token: \"a\"\n  refresh_token: \"b\"\n"


def test_missing_nested_section_follows_file_indent_step() -> None:
    text = "webhooks:\n    plex:\n        token: x\n"
    out = edit_yaml(text, {("webhooks", "emby", "token"): "yy"})
    assert out == "webhooks:\n    plex:\n        token: x\n    emby:\n        token: \"yy\"\n"


def test_crlf_is_kept() -> None:
    text = "server:\r\n  port: 1 # c\r\ntrakt:\r\n  access_token: old\r\n"
    out = edit_yaml(text, {("trakt", "access_token"): "new", ("trakt", "expires_at"): 5})
    assert out == "server:\r\n  port: 1 # c\r\ntrakt:\r\n  access_token: new\r\n  expires_at: 5\r\n"


def test_flow_list_and_comments_survive() -> None:
    out = edit_yaml(UGLY, {("server", "port"): 9000})
    assert "username_whitelist: [alice, \"Bob Smith\", 'id:42']" in out
    assert out.startswith("# cwhook config, hand-written\n")
    assert out.endswith("# trailing comment\n")


def test_empty_section_and_flow_mapping() -> None:
    assert edit_yaml("trakt:\nx: 1\n", {("trakt", "a"): "b"}) == 'trakt:\n  a: "b"\nx: 1\n'
    assert edit_yaml("trakt: {}\n", {("trakt", "a"): "b"}) == 'trakt:\n  a: "b"\n'
    with pytest.raises(YamlEditError, match="flow style"):
        edit_yaml(UGLY, {("webhooks", "jellyfin", "token"): "x"})


def test_no_file_and_no_trailing_newline() -> None:
    assert edit_yaml("", {("a", "b"): 1}) == "a:\n  b: 1\n"
    assert edit_yaml("x: 1", {("a", "b"): 1}) == "x: 1\na:\n  b: 1\n"


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(YamlEditError):
        edit_yaml("- a\n", {("a",): 1})
    with pytest.raises(YamlEditError):
        edit_yaml("a: [1]\n", {("a", "b"): 1})
    with pytest.raises(YamlEditError, match="not valid YAML"):
        edit_yaml("a: [\n", {("a", "b"): 1})


def test_block_scalar_replaced() -> None:
    text = "a:\n  b: |\n    long\n    text\n  c: 1\n"
    out = edit_yaml(text, {("a", "b"): "short"})
    assert yaml.safe_load(out) == {"a": {"b": "short", "c": 1}}


@pytest.mark.parametrize("value", ["yes", "no", "null", "~", "123", "1.5", "", " lead", "a: b",
                                   "a #b", "x'y", 'q"q', "line\nbreak", "ünïcode", "-", "@x",
                                   "true", "0x10", "2020-01-01"])
@pytest.mark.parametrize("style", [None, "'", '"'])
def test_format_scalar_round_trips(value: str, style: str | None) -> None:
    assert yaml.safe_load("k: " + format_scalar(value, style))["k"] == value


safe_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40)


@settings(max_examples=150, deadline=None)
@given(
    token=safe_text,
    access=safe_text,
    expires=st.integers(min_value=0, max_value=2**40),
    crlf=st.booleans(),
)
def test_edit_round_trips_and_keeps_other_lines(token: str, access: str, expires: int, crlf: bool) -> None:
    text = UGLY.replace("\n", "\r\n") if crlf else UGLY
    out = edit_yaml(text, {("webhooks", "plex", "token"): token, ("trakt", "access_token"): access,
                           ("trakt", "expires_at"): expires})
    data = yaml.safe_load(out)
    assert data["webhooks"]["plex"]["token"] == token
    assert data["trakt"]["access_token"] == access
    assert data["trakt"]["expires_at"] == expires
    before = yaml.safe_load(text)
    before["webhooks"]["plex"]["token"] = token
    before["trakt"]["access_token"] = access
    before["trakt"]["expires_at"] = expires
    assert data == before
    # all but the three edited lines are byte-identical
    nl = "\r\n" if crlf else "\n"
    a, b = text.split(nl), out.split(nl)
    assert len(a) == len(b)
    assert sum(x != y for x, y in zip(a, b, strict=True)) <= 3


def test_update_file_keeps_mode_and_writes_atomically(tmp_path: Path) -> None:
    files = ConfigFiles()  # this test's process
    path = tmp_path / "c.yml"
    path.write_text(UGLY)
    os.chmod(path, 0o640)
    inode = path.stat().st_ino
    files.update_file(path, {("trakt", "access_token"): "zzz"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert path.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert yaml.safe_load(path.read_text())["trakt"]["access_token"] == "zzz"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_update_starts_from_disk_not_memory(tmp_path: Path) -> None:
    files = ConfigFiles()  # this test's process
    path = tmp_path / "c.yml"
    path.write_text("trakt:\n  access_token: a\n")
    files.update_file(path, {("trakt", "access_token"): "b"})
    # a hand edit in between
    path.write_text(path.read_text() + "# added by hand\nlogging:\n  level: debug\n")
    files.update_file(path, {("trakt", "access_token"): "c"})
    assert path.read_text() == "trakt:\n  access_token: c\n# added by hand\nlogging:\n  level: debug\n"


def test_concurrent_writers_never_lose_an_update(tmp_path: Path) -> None:
    files = ConfigFiles()  # this test's process
    path = tmp_path / "c.yml"
    path.write_text("a:\n  x: 0\n")
    keys = [f"k{i}" for i in range(20)]

    def writer(key: str) -> None:
        files.update_file(path, {("a", key): key})

    threads = [threading.Thread(target=writer, args=(k,)) for k in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = yaml.safe_load(path.read_text())
    assert all(data["a"][k] == k for k in keys)


def test_bom_is_kept(tmp_path: Path) -> None:
    files = ConfigFiles()  # this test's process
    path = tmp_path / "c.yml"
    path.write_bytes(b"\xef\xbb\xbftrakt:\n  access_token: a\n")
    files.update_file(path, {("trakt", "access_token"): "b"})
    assert path.read_bytes() == b"\xef\xbb\xbftrakt:\n  access_token: b\n"


def test_create_default_is_0600_with_tokens(tmp_path: Path) -> None:
    files = ConfigFiles()  # this test's process
    path = tmp_path / "new" / "cwhook.yml"
    files.create_default(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = yaml.safe_load(path.read_text())
    tokens = [data["webhooks"][s]["token"] for s in ("plex", "jellyfin", "emby")]
    assert all(len(t) >= 32 for t in tokens) and len(set(tokens)) == 3
    before = path.read_text()
    files.create_default(path)  # never overwrites
    assert path.read_text() == before


def test_write_atomic_new_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "x"
    write_atomic(path, b"hi")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
