"""What every ``radsetu`` command shares: logging, loading a config, and one way to
fail. A command raises CommandError; ``run`` prints ``radsetu <command>: <message>``
on standard error and exits with its code:

- 0: done;
- 1: the work failed (a damaged or unverifiable file, refused instances);
- 2: the command cannot run as asked (configuration, a missing path, a box already
  running, a refused name or password).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import Any

from common.config import Config, ConfigError

DONE, FAILED, CANNOT_RUN = 0, 1, 2


class CommandError(Exception):
    def __init__(self, message: str, code: int = FAILED):
        super().__init__(message)
        self.code = code


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pynetdicom narrates every PDU at INFO; its warnings are what matter to us
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def load_config(loader: Callable[[str | None], Config], path: str | None) -> Config:
    try:
        return loader(path)
    except ConfigError as exc:
        raise CommandError(f"configuration error: {exc}", CANNOT_RUN) from exc


def run(args: argparse.Namespace) -> int:
    """Run the parsed command; the one place a command's error becomes an exit code."""
    try:
        return int(args.func(args))
    except CommandError as exc:
        print(f"radsetu {args.command_name}: {exc}", file=sys.stderr)
        return exc.code


def command(sub: Any, name: str, full_name: str, func: Callable[..., int], **kw: Any) -> Any:
    """A sub-command whose errors are reported as ``radsetu <full_name>: ...``."""
    p = sub.add_parser(name, **kw)
    p.set_defaults(func=func, command_name=full_name)
    return p


def user_add(args: argparse.Namespace, store: Any, add: Any, errors: Any, what: str) -> int:
    """``radsetu edge|hub user add``: add (or change) the account, or with
    ``--if-absent`` leave one that exists as it is; a refused name, role or password
    is a CommandError that says why."""
    try:
        if (
            args.if_absent
            and store.db.execute("SELECT 1 FROM users WHERE username=?", [args.name]).fetchone()
        ):
            print(f"user {args.name} exists: left as it is")
            return DONE
        add()
    except errors as exc:
        raise CommandError(str(exc), CANNOT_RUN) from exc
    finally:
        store.close()
    print(f"user {args.name} ({what}) saved")
    return DONE


def user_disable(store: Any, name: str, disable: Any, errors: Any) -> int:
    """``radsetu edge|hub user disable``: the account can no longer log in, and every
    session it has ends at once (its API tokens too, at the hub)."""
    try:
        ended = disable()
    except errors as exc:
        raise CommandError(str(exc), CANNOT_RUN) from exc
    finally:
        store.close()
    print(f"user {name} disabled; {ended} sessions ended")
    return DONE
