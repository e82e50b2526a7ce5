"""Every curl example in docs/ runs against a real daemon and gets the status it promises."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import shutil
import subprocess
from collections.abc import Callable

import pytest

from cwhook.sources.registry import SOURCES
from tests.builders import parse_python
from tests.conftest import ROOT, TOKENS, Daemon

pytestmark = pytest.mark.slow

EXAMPLE = re.compile(r"^(curl .*?)\s+# expect (\d{3})(?: (\{.*\}))?$")


def examples() -> list[tuple[str, str, int]]:
    return [(page, command, status) for page, command, status, _ in answered_examples()]


def answered_examples() -> list[tuple[str, str, int, dict[str, object] | None]]:
    """(page, command, status, documented answer or None) for every `# expect NNN [answer]` line."""
    found = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for line in page.read_text().splitlines():
            m = EXAMPLE.match(line.strip())
            if m:
                answer = json.loads(m.group(3)) if m.group(3) else None
                found.append((page.name, m.group(1), int(m.group(2)), answer))
    return found


def check_answer(documented: dict[str, object], body: dict[str, object]) -> None:
    """Every documented field is in the body; a value ending in … is a prefix."""
    for key, value in documented.items():
        if isinstance(value, str) and value.endswith("…"):
            assert str(body.get(key, "")).startswith(value[:-1]), (key, value, body)
        else:
            assert body.get(key) == value, (key, value, body)


def test_docs_have_curl_examples_for_every_endpoint() -> None:
    text = " ".join(cmd for _, cmd, _ in examples())
    for path in ("/healthz", *(source.path for source in SOURCES.values())):
        assert path in text


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is installed by .ci/run")
def test_every_curl_example(daemon_factory: Callable[..., Daemon]) -> None:
    d = daemon_factory()
    env = dict(os.environ, **{f"{name.upper()}_TOKEN": TOKENS[name] for name in SOURCES})
    ran = answers = 0
    for page, command, expected, answer in answered_examples():
        cmd = command.replace("http://localhost:8787", d.base) + " -w '\\n%{http_code}'"
        out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=ROOT, env=env, timeout=30)
        assert out.returncode == 0, (page, command, out.stderr)
        body, _, status = out.stdout.rpartition("\n")
        assert int(status) == expected, (page, command, out.stdout)
        data = json.loads(body)  # always JSON
        if answer is not None:
            check_answer(answer, data)
            answers += 1
        if ran == 1 and page == "curl.md":  # the first Plex example: its whole answer is on the page
            shown = re.search(r"The answer to the first one.*?```json\n(.*?)```", (ROOT / "docs" / page).read_text(),
                              re.S)
            assert shown is not None and json.loads(shown.group(1)) == data, json.dumps(data["event"])
        ran += 1
    assert ran >= 10 and answers >= 4


def render_handlebars(template: str, data: dict[str, object]) -> str:
    """Enough of Handlebars.Net for the recommended template: {{x}} and {{{x}}}, .NET bools."""

    def value(match: re.Match[str]) -> str:
        raw = data.get(match.group(2).strip(), "")
        if isinstance(raw, bool):
            return "True" if raw else "False"
        return str(raw).replace('"', '\\\\"')

    return re.sub(r"\{\{(\{?)([^{}]+)\}?\}\}", value, template)


def test_recommended_jellyfin_template_is_understood() -> None:
    from cwhook.kernel.event import Event
    from cwhook.sources import jellyfin
    from tests.conftest import fixture_json

    doc = (ROOT / "docs" / "jellyfin.md").read_text()
    template = re.search(r"```handlebars\n(.*?)```", doc, re.S)
    assert template is not None
    assert template.group(1) == (ROOT / "docs" / "examples" / "jellyfin-template.handlebars").read_text()
    for name, action in [("reconstructed/jellyfin_PlaybackProgress_episode_paused.RECONSTRUCTED.json", "progress"),
                         ("reconstructed/jellyfin_PlaybackStop_episode.RECONSTRUCTED.json", "stop"),
                         ("reconstructed/jellyfin_PlaybackStop_episode_double.RECONSTRUCTED.json", "stop"),
                         ("reconstructed/jellyfin_UserDataSaved_movie.RECONSTRUCTED.json", "mark_watched"),
                         ("jellyfin_PlaybackStop_movie.json", "stop")]:
        data = fixture_json(name)
        body = render_handlebars(template.group(1), data)
        json.loads(body)  # the template renders valid JSON
        ev = jellyfin.parse("text/plain; charset=utf-8", body.encode())
        send_all = jellyfin.parse("application/json", json.dumps(data).encode())
        assert isinstance(ev, Event) and isinstance(send_all, Event) and ev.action == action
        for field in ("kind", "title", "year", "ids", "show_title", "show_year", "season", "number", "progress",
                      "paused", "user_name", "user_id", "player_id", "item_key", "number_end"):
            if field == "paused" and action == "mark_watched":
                continue  # a mark has no playback state; the template's empty IsPaused reads False
            assert getattr(ev, field) == getattr(send_all, field), (name, field)


# --- every log event is in docs/troubleshooting.md ---------------------------------------------

LOG_METHODS = {"info", "warning", "error", "exception"}


def _log_method(node: ast.expr, aliases: dict[str, list[str]]) -> list[str]:
    """The log methods an expression stands for: `log.error`, `(log.error if x else log.warning)`,
    or a name bound to one of those (`level = log.debug if ... else log.info`)."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id.endswith("log"):
        return [node.attr]
    if isinstance(node, ast.IfExp):
        return _log_method(node.body, aliases) + _log_method(node.orelse, aliases)
    if isinstance(node, ast.Name):
        return aliases.get(node.id, [])
    return []


def log_events() -> dict[str, list[str]]:
    """Event name -> where it is logged, for every log.info/warning/error/exception call in cwhook/
    whose first argument is a literal string (a computed name such as "trakt_" + result is left
    to the table of the Trakt side)."""
    found: dict[str, list[str]] = {}
    for source in sorted((ROOT / "cwhook").rglob("*.py")):
        tree = parse_python(source.read_text(), str(source))
        aliases: dict[str, list[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                methods = _log_method(node.value, {})
                if methods:
                    aliases[node.targets[0].id] = methods
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)):
                continue
            if LOG_METHODS & set(_log_method(node.func, aliases)):
                found.setdefault(node.args[0].value, []).append(f"{source.name}:{node.lineno}")
    return found


def test_the_log_event_finder_finds_what_it_should() -> None:
    events = log_events()
    for name in ("config_refused", "trakt_failed", "request", "decision", "listen_failed"):
        assert name in events, name  # plain, conditional method, and a method bound to a name


def test_every_log_event_is_in_troubleshooting() -> None:
    doc = (ROOT / "docs" / "troubleshooting.md").read_text()
    missing = {name: where for name, where in log_events().items() if f"`{name}`" not in doc}
    assert not missing, (
        "these log events are not in docs/troubleshooting.md (add a row to 'Every log event, and what to do'"
        " with the meaning and what to do):\n" + "\n".join(f"  {name}  ({', '.join(where)})"
                                                          for name, where in sorted(missing.items())))


def test_the_unit_documentation_is_installed_by_the_install_steps() -> None:
    unit = (ROOT / "systemd" / "cwhook.service").read_text()
    install = (ROOT / "docs" / "install.md").read_text()
    docs = re.findall(r"^Documentation=(.*)$", unit, re.M)
    assert docs
    for uri in docs[0].split():
        assert uri.startswith("file://"), uri
        assert uri.removeprefix("file://") in install, f"{uri} is not installed by docs/install.md"


def test_install_steps_are_runnable_as_written() -> None:
    install = (ROOT / "docs" / "install.md").read_text()
    assert "apt install python3-venv" in install
    assert "$EDITOR" not in install.split("sudoedit")[0]  # `sudo -u cwhook $EDITOR` fails when it is unset
    assert "sudoedit -u cwhook /etc/cwhook/cwhook.yml" in install
    # The steps use paths of the source tree (systemd/, README.md, docs/, `pip install .`): the page says
    # where to run them before its first command.
    assert install.index("Run these steps from the top of the cwhook source tree") < install.index("```sh")
    assert "systemd/cwhook.service /etc/systemd/system/" in install


# --- the commands in the docs work as written (issue 17 item 6) ----------------------------------


def shell_lines(page: str) -> list[str]:
    """The command lines of a page's ```sh blocks and of its `$ ` transcripts."""
    text = (ROOT / page).read_text()
    lines = []
    for block in re.findall(r"```(sh|)\n(.*?)```", text, re.S):
        for line in block[1].replace("\\\n", " ").splitlines():
            line = line.strip()
            if block[0] == "sh" and line and not line.startswith("#"):
                lines.append(line)
            elif line.startswith("$ "):
                lines.append(line[2:])
    return lines


def cwhook_commands(page: str) -> list[list[str]]:
    """Every `cwhook ...` invocation on a page, as its argument list (after sudo -u USER)."""
    import shlex

    found = []
    for line in shell_lines(page):
        words = shlex.split(line.split("  #")[0], comments=True)
        if words[:3] == ["sudo", "-u", "cwhook"]:
            words = words[3:]
        if words and words[0] in ("cwhook", "/opt/cwhook/bin/cwhook"):
            found.append(words)
    return found


def test_every_cwhook_command_in_the_docs_parses() -> None:
    from cwhook.cli.main import _parser

    pages = ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))]
    seen = 0
    for page in pages:
        for words in cwhook_commands(page):
            try:
                _parser().parse_args(words[1:])
            except SystemExit as exc:
                if exc.code not in (0, None):
                    raise AssertionError(f"{page}: `{' '.join(words)}` is not a valid command") from None
            seen += 1
    assert seen >= 6


def test_install_puts_cwhook_on_the_path_before_using_it() -> None:
    lines = shell_lines("docs/install.md")
    link = next(i for i, line in enumerate(lines)
                if line.startswith("sudo ln -sf /opt/cwhook/bin/cwhook /usr/local/bin/cwhook"))
    assert link == 1 + next(i for i, line in enumerate(lines) if "/opt/cwhook/bin/pip install ." in line)
    bare = [i for i, line in enumerate(lines) if re.search(r"(^|sudo -u cwhook )cwhook ", line)]
    assert bare and min(bare) > link
    # The service's files are private: every command that reads them runs as the service user, and
    # names the file (there is no ./cwhook.yml where the person stands).
    for words in cwhook_commands("docs/install.md"):
        assert "-c" in words and words[words.index("-c") + 1] == "/etc/cwhook/cwhook.yml", words
    for line in lines:
        if re.search(r"\bcwhook (status|recent|accounts|urls|auth|check-config|rotate-tokens)\b", line):
            assert line.startswith("sudo -u cwhook "), line
    monitoring = (ROOT / "docs" / "monitoring.md").read_text()
    assert "$ sudo -u cwhook cwhook status -c /etc/cwhook/cwhook.yml" in monitoring
    assert "private to that user" in monitoring


def test_curl_examples_are_tests_but_one() -> None:
    """Every webhook example in curl.md carries X-Cwhook-Dry-Run: 1 but the one documented to send."""
    found = [(cmd, status, answer) for page, cmd, status, answer in answered_examples()
             if page == "curl.md" and "/webhook/" in cmd]
    real = [(cmd, status, answer) for cmd, status, answer in found if "X-Cwhook-Dry-Run: 1" not in cmd]
    assert len(real) == 1 and real[0][1] == 202 and real[0][2] == {"status": "queued"}, real
    assert sum(answer == {"status": "test"} for _, _, answer in found) >= 7
    doc = (ROOT / "docs" / "curl.md").read_text()
    assert "no_account" in doc and "households" in doc.lower()


def test_install_commands_run_against_a_daemon_made_from_the_example(daemon_factory: Callable[..., Daemon],
                                                                     tmp_path: pathlib.Path) -> None:
    """install.md's `cwhook` commands, run as written (the service user and the file's place aside),
    on the example file it installs, with a daemon running as step 4 leaves it."""
    import sys

    example = (ROOT / "cwhook" / "config.example.yml").read_text()
    text = example.replace("  port: 8787", "  port: {port}").replace("  dir: ./state", f"  dir: {tmp_path / 'state'}")
    d = daemon_factory(text)
    ran = 0
    for words in cwhook_commands("docs/install.md"):
        if words[1] in ("auth", "run"):
            continue  # auth needs trakt.tv; run is the unit's
        args = [d.config_path.as_posix() if w == "/etc/cwhook/cwhook.yml" else w for w in words[1:]]
        out = subprocess.run([sys.executable, "-m", "cwhook", *args], capture_output=True, text=True, timeout=30)
        # status: 1 = degraded (Trakt is not authorized yet at this step), which it says
        assert out.returncode in ((0, 1) if words[1] == "status" else (0,)), (words, out.stdout, out.stderr)
        assert "Traceback" not in out.stderr
        ran += 1
    assert ran >= 3


def test_readme_layout_names_every_package_and_module() -> None:
    """A newcomer finds every package of cwhook/ in README's layout table, and every module in its package's row."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout"):]
    rows = {line.split("`")[1]: line for line in table.splitlines() if line.startswith("| `cwhook/")}
    packages = sorted(p.parent for p in (ROOT / "cwhook").glob("*/__init__.py"))
    missing = [f"cwhook/{p.name}/" for p in packages if f"cwhook/{p.name}/" not in rows]
    assert missing == [], f"README's layout table has no row for {missing}"
    unnamed = [f"{p.name}/{m.name}" for p in packages for m in sorted(p.glob("*.py"))
               if m.name != "__init__.py" and f"`{m.name}`" not in rows[f"cwhook/{p.name}/"]]
    assert unnamed == [], f"README's layout table does not name {unnamed} in its package's row"
    stray = sorted(m.name for m in (ROOT / "cwhook").glob("*.py") if m.name not in ("__init__.py", "__main__.py"))
    assert stray == [], f"modules outside a package: {stray}"


def test_the_environment_is_read_in_one_module() -> None:
    """cwhook/service/environment.py reads the process environment; every other module is handed
    the values (constructor parameters from the composition root or the CLI)."""
    readers = sorted(str(m.relative_to(ROOT)) for m in (ROOT / "cwhook").rglob("*.py")
                     if re.search(r"\bos\.environ\b|\bgetenv\b|\benviron\b", m.read_text()))
    assert readers == ["cwhook/service/environment.py"], readers


def test_the_code_cites_docs_never_a_spec_outside_the_repository() -> None:
    """Comments point a reader at docs/ (which ships with the code), not at a document they cannot open."""
    cited = [f"{p.relative_to(ROOT)}:{n}" for p in sorted((ROOT / "cwhook").rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if "§" in line or "spec.md" in line]
    assert cited == [], cited
