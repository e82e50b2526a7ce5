"""The command line: run, check-config, urls, rotate-tokens, auth, status, recent, outbox, --version."""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path
from typing import NoReturn

from cwhook import __version__
from cwhook.config.file import ConfigFiles, ConfigWriteError, check_writable
from cwhook.config.schema import (
    ACCOUNT_NAME,
    DEFAULT_ACCOUNT,
    SERVERS,
    AccountConfig,
    Config,
    ConfigError,
    load_config,
    resolve_config_path,
)
from cwhook.config.urls import urls_text
from cwhook.config.yamledit import YamlEditError
from cwhook.kernel import hint, logs
from cwhook.service.environment import Environment
from cwhook.system.listen import bind_error, listen_problem
from cwhook.system.statedir import PRIVATE_UMASK, StateDirError, ensure_private_dir, state_dir_problem

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors starting ``cwhook:`` like every other error."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        command = self.prog.removeprefix("cwhook").strip()
        self.exit(EXIT_USAGE, f"cwhook: {command + ': ' if command else ''}{message} (`{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cwhook",
        description="Scrobble Plex, Jellyfin, Emby and Tautulli playback webhooks to Trakt.",
    )
    parser.add_argument("--version", action="version", version=f"cwhook {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("-c", "--config", metavar="PATH",
                       help="config file (default: $CWHOOK_CONFIG, else ./cwhook.yml)")
        return p

    run = add("run", "run the daemon in the foreground until SIGTERM/SIGINT")
    run.add_argument("--dry-run", action="store_true",
                     help="process webhooks and log the Trakt calls, send nothing")
    add("check-config", "validate the config file")
    add("urls", "print the webhook URLs with a curl example for each")
    rotate = add("rotate-tokens", "replace webhook tokens (all servers when none named)")
    rotate.add_argument("servers", nargs="*", metavar="SERVER", help=f"{', '.join(SERVERS[:-1])} or {SERVERS[-1]}")
    auth = add("auth", "log in to Trakt (device code) and store the tokens in the config file")
    auth.add_argument("--account", metavar="NAME", default=DEFAULT_ACCOUNT,
                      help="the Trakt account (trakt.accounts.NAME) to log in; default: `default`")
    add("accounts", "one line per Trakt account: users, authorization, token expiry, outbox pending")
    status = add("status", "ask the running daemon how it is doing (exit 0 ok, 1 degraded, 3 not running)")
    status.add_argument("--url", metavar="URL",
                        help="where the daemon answers (e.g. http://127.0.0.1:8787), when the config "
                             "file cannot tell")
    recent = add("recent", "what happened to the latest events (the decision journal), newest last")
    recent.add_argument("-n", type=_positive, default=20, metavar="N", help="how many events (default 20)")
    recent.add_argument("--user", metavar="U", help="only this media-server user (NAME or SERVER:NAME)")
    recent.add_argument("--item", metavar="TEXT", help="only items whose title contains TEXT")
    recent.add_argument("--account", metavar="A", help="only events decided for this Trakt account")
    recent.add_argument("--json", action="store_true", help="one JSON object per line")
    outbox = add("outbox", "list the Trakt actions set aside; retry, send or drop them")
    outbox.add_argument("action", nargs="?", choices=("retry", "send", "drop"),
                        help="retry: try again; send: without asking Trakt's history first; drop: forget")
    outbox.add_argument("ids", nargs="*", type=int, metavar="ID", help="entries, as `cwhook outbox` lists them")
    outbox.add_argument("--all", action="store_true", help="every entry set aside")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text!r}")
    return value


def _err(message: str) -> None:
    print(f"cwhook: {message}", file=sys.stderr)


def _load(files: ConfigFiles, path: Path, settled: bool = False, deliberate: bool = False,
          create: bool = False) -> Config | None:
    """The config, or None after printing its problems. ``settled``: a command about to
    rewrite the file waits (up to 10 s) for a file that has stopped changing and parses.
    ``deliberate``: the file as read is what the person wants (keys removed on purpose)."""
    try:
        config = files.load_settled(path) if settled else load_config(path)
    except ConfigError as exc:
        _err(f"{path}: the configuration has problems:")
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None
    files.remember(config, deliberate, create)  # a rewrite of this file must find every key the last good version had
    return config


def cmd_check_config(files: ConfigFiles, path: Path) -> int:
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem)
        return EXIT_USAGE
    state = state_dir_problem(config.state_dir, path)  # `run` as this user would stop there
    if state is not None:
        print(state)
        return EXIT_USAGE
    print("config OK")
    removed = files.remember(config, deliberate=True)  # the person checked it: later rewrites start from it
    if removed:
        print(f"(removed since cwhook last read it whole: {', '.join(removed)}; taken as deliberate, so "
              "rewrites by rotate-tokens, auth and the daemon no longer ask for them)")
    return 0


def cmd_run(files: ConfigFiles, env: Environment, path: Path, dry_run: bool) -> int:
    os.umask(PRIVATE_UMASK)  # every file the daemon creates (state dir, database, journals) is 0600
    first_run = not path.exists()
    if first_run:
        files.create_default(path)
    config = _load(files, path, deliberate=True, create=True)  # the daemon runs with the file as it is now
    if config is None:
        return EXIT_USAGE
    config = files.fill_missing_tokens(config)
    logging = logs.Logging(journal_stream=env.journal_stream)
    logging.configure(config.logging.level, config.logging.format)
    ensure_private_dir(config.state_dir, path)
    bind_failure = bind_error(config.server.host, config.server.port)
    if bind_failure is not None:  # before any banner: this is the one thing to read
        _err(listen_problem(config.server.host, config.server.port, bind_failure, path))
        return 1
    out = sys.stdout
    if first_run:
        out.write(f"Created {path} with fresh webhook tokens (mode 0600).\n")
    if first_run and out.isatty():
        out.write("Webhook URLs (paste each into its media server):\n")
        out.write(urls_text(config) + "\n")
    else:  # never a token in a log (journald keeps stdout)
        out.write(f"The webhook URLs hold their tokens: run `{hint.command('urls', path)}` to see them.\n")
    if not config.trakt.access_token:
        out.write(
            "Trakt is not authorized yet: running in dry-run (nothing is sent to Trakt).\n"
            f"To authorize: put your Trakt app's client_id and client_secret under `trakt:` in "
            f"{path}, then run `{hint.command('auth', path)}`.\n"
        )
    out.flush()
    from cwhook.service.daemon import run_daemon

    try:
        return run_daemon(config, dry_run, env, logging, files)
    except sqlite3.Error as exc:
        _err(f"cannot use the database in state.dir {config.state_dir}: {exc}. Fix: check that the "
             "directory is writable and not full, and that no other program holds the database")
        return 1


def cmd_urls(files: ConfigFiles, path: Path) -> int:
    config = _load(files, path)
    if config is None:
        return EXIT_USAGE
    config = files.fill_missing_tokens(config)
    print(urls_text(config))
    return 0


def cmd_rotate(files: ConfigFiles, path: Path, servers: list[str]) -> int:
    config = _load(files, path, settled=True)
    if config is None:
        return EXIT_USAGE
    chosen = tuple(dict.fromkeys(servers)) or SERVERS
    config = files.rotate_tokens(config, list(chosen))
    print(f"New tokens written to {path}. A running daemon uses them within a few seconds;")
    print("the old URLs now get 401. Paste the new URLs into your media servers:")
    print(urls_text(config, chosen))
    return 0


def _who_logs_in(config: Config, account: str) -> str:
    """Whose Trakt login an account is: its media-server users, as the file says."""
    acc = config.trakt.account(account)
    users = acc.users if acc is not None else ()
    if not users:
        return "no media-server users yet"
    if any(u in ("*", "*:*") for u in users):
        return "users: everyone (" + ", ".join(users) + ")"
    return "users: " + ", ".join(users)


def cmd_auth(files: ConfigFiles, path: Path, account: str = DEFAULT_ACCOUNT) -> int:
    import asyncio  # only `run` and `auth` need an event loop: the other commands start without it

    from cwhook.trakt.auth import DeviceFlowError, device_login

    if account != DEFAULT_ACCOUNT and not ACCOUNT_NAME.fullmatch(account):
        _err(f"--account {account!r}: an account name is 1-32 of a-z 0-9 _ -")
        return EXIT_USAGE
    config = _load(files, path, settled=True)
    if config is None:
        return EXIT_USAGE
    again = hint.auth(account, path)
    new_account = config.trakt.account(account) is None
    key = AccountConfig(account).key
    empty = [k for k, v in (("trakt.client_id", config.trakt.client_id),
                            ("trakt.client_secret", config.trakt.client_secret)) if not v]
    if empty:
        _err(
            f"{' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty in {path}. Create an API app at "
            "https://trakt.tv/oauth/applications (redirect URI urn:ietf:wg:oauth:2.0:oob) if you have none, "
            f"put its {' and '.join(k.split('.')[1].replace('_', ' ') for k in empty)} into the file, "
            f"and run `{again}` again."
        )
        return EXIT_USAGE
    check_writable(path)  # find out now, not after the user has entered the code on trakt.tv
    try:
        # Whose login this is, for every account (`default` too): the code must be entered on
        # trakt.tv while logged in as that person, or their plays go to someone else's history.
        print(f"Logging in the Trakt account {account!r} ({_who_logs_in(config, account)}): enter the "
              "code while logged in to trakt.tv as the person whose plays these are.")
        changes = asyncio.run(device_login(config.trakt, sys.stdout, key=key))
    except DeviceFlowError as exc:
        _err(f"Trakt login failed: {exc}. To try again: `{again}`")
        return 1
    except KeyboardInterrupt:
        _err("Trakt login cancelled")
        return 130
    except OSError as exc:
        _err(f"cannot reach Trakt at {config.trakt.oauth_url}: {exc}")
        return 1
    try:
        files.update_file(path, changes)
    except ConfigWriteError as exc:
        _err(f"the Trakt login worked, but the tokens could not be saved: {exc}. "
             f"Then run `{again}` again")
        return 1
    if new_account:
        print(f"Trakt authorized; added trakt.accounts.{account} with its tokens to {path}.\n"
              f"Now say who scrobbles to it: add `users:` under trakt.accounts.{account}, e.g.\n"
              f'      users: ["plex:Anna", "jellyfin:anna"]\n'
              f"(until then `{hint.command('check-config', path)}` reports it and the running daemon keeps "
              "its previous settings).")
        return 0
    print(f"Trakt authorized; tokens written to {path}. A running daemon picks them up "
          "within a few seconds.")
    return 0


def cmd_accounts(files: ConfigFiles, path: Path) -> int:
    from cwhook.cli.accounts import accounts_text

    config = _load(files, path)
    if config is None:
        return EXIT_USAGE
    print(accounts_text(config))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`cwhook urls | head -1`): nothing to say, and nothing
        # more to flush at exit either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: list[str] | None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [s for s in getattr(args, "servers", []) if s not in SERVERS]
    if unknown:
        parser.error(f"unknown server {unknown[0]!r} (choose from {', '.join(SERVERS)})")
    env = Environment.read()
    files = ConfigFiles()  # this command's memory of the config file it reads and rewrites
    path = resolve_config_path(getattr(args, "config", None), env.config_path)
    try:
        if args.command == "run":
            return cmd_run(files, env, path, args.dry_run)
        if args.command == "check-config":
            return cmd_check_config(files, path)
        if args.command == "urls":
            return cmd_urls(files, path)
        if args.command == "rotate-tokens":
            return cmd_rotate(files, path, args.servers)
        if args.command == "auth":
            return cmd_auth(files, path, args.account)
        if args.command == "accounts":
            return cmd_accounts(files, path)
        if args.command == "status":  # asks the daemon even when the file is broken
            from cwhook.cli.status import cmd_status
            return cmd_status(path, args.url)
        if args.command in ("recent", "outbox"):
            config = _load(files, path)
            if config is None:
                return EXIT_USAGE
            if args.command == "outbox":
                from cwhook.cli.outbox import cmd_outbox
                return cmd_outbox(config, args.action, args.ids, args.all)
            from cwhook.cli.recent import cmd_recent
            return cmd_recent(config, args.n, args.user, args.item, args.account, args.json)
    except YamlEditError as exc:
        _err(f"{path}: cannot edit the file in place: {exc}")
        return EXIT_USAGE
    except (ConfigWriteError, StateDirError) as exc:
        _err(str(exc))
        return 1
    except BrokenPipeError:
        raise
    except OSError as exc:
        _err(f"{exc.filename or path}: {exc.strerror or exc}")
        return 1
    return EXIT_USAGE  # pragma: no cover - argparse rejects unknown commands
