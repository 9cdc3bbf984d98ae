"""The hub's commands: ``radsetu hub serve|ingest|import|user|token|install-viewer``."""

from __future__ import annotations

import argparse
import tarfile
from pathlib import Path
from typing import Any

from common.cli import (
    CANNOT_RUN,
    DONE,
    CommandError,
    command,
    load_config,
    setup_logging,
    user_add,
    user_disable,
)
from common.config import Config
from common.passwords import read_password
from hub import config as hub_config
from hub import ohifinstall
from hub.access import add_token, revoke_tokens
from hub.ingest import import_pack
from hub.mqtt import run as run_ingest
from hub.service import serve
from hub.store import FileHubStore, open_store
from hub.users import UserError, add, disable
from wire.errors import RemoteProtocolError

EPILOG_HUB_IMPORT = "example: radsetu hub import study1.radsetu --data-dir /var/lib/radsetu-hub"
EPILOG_HUB_SERVE = "example: radsetu hub serve --config /etc/radsetu/hub.toml"
EPILOG_HUB_INGEST = "example: radsetu hub ingest --config /etc/radsetu/hub.toml"
EPILOG_INSTALL_VIEWER = (
    "example: radsetu hub install-viewer ohif-app-3.13.2.tgz --dest /opt/radsetu/ohif "
    "(the tarball is checked against the pinned SHA-512 first; npm pack @ohif/app@3.13.2 "
    "makes it)"
)
EPILOG_HUB_USER = (
    "example: radsetu hub user add dr-rao --role radiologist --config /etc/radsetu/hub.toml "
    "(asks for the password, or reads it from standard input); radsetu hub user disable "
    "dr-rao --config /etc/radsetu/hub.toml (ends the sessions, revokes the API tokens)"
)
EPILOG_HUB_TOKEN = (
    "example: radsetu hub token add ops-bot --label prometheus --config /etc/radsetu/hub.toml "
    "(prints the token once; send it as 'Authorization: Bearer <token>'; it is good for "
    "--days, 90 by default); radsetu hub token revoke ops-bot [--label prometheus]"
)


def _config(path: str | None) -> Config:
    config = load_config(hub_config.load, path)
    setup_logging(config["log_level"])
    return config


def cmd_import(args: argparse.Namespace) -> int:
    setup_logging("INFO" if args.verbose else "WARNING")
    store = FileHubStore(Path(args.data_dir))
    try:
        ack = import_pack(store, args.file)
    except (RemoteProtocolError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    finally:
        store.close()
    if not ack.get("verified"):
        raise CommandError(
            f"transfer {ack['transfer_id']}: NOT verified (held {ack['held']}, asked again "
            f"for {ack.get('resend', [])}); see the log"
        )
    print(f"transfer {ack['transfer_id']}: every instance verified and stored")
    return DONE


def cmd_serve(args: argparse.Namespace) -> int:
    return serve(_config(args.config))


def cmd_ingest(args: argparse.Namespace) -> int:
    return run_ingest(_config(args.config))


def cmd_user(args: argparse.Namespace) -> int:
    config = _config(args.config)
    if args.action == "disable":
        store = open_store(config)

        def disable_all() -> int:
            ended = disable(store, args.name)
            revoke_tokens(store, args.name)
            return ended

        return user_disable(store, args.name, disable_all, UserError)
    if not args.role:
        raise CommandError("hub user add needs --role radiologist|operator|admin", CANNOT_RUN)
    password = read_password(args.name)
    store = open_store(config)
    return user_add(
        args,
        store,
        lambda: add(store, args.name, args.role, password, args.must_change),
        UserError,
        args.role,
    )


def cmd_token(args: argparse.Namespace) -> int:
    config = _config(args.config)
    store = open_store(config)
    try:
        if args.action == "revoke":
            n = revoke_tokens(store, args.name, args.label or None)
            print(f"{n} API tokens of {args.name} revoked")
            return DONE
        token = add_token(store, args.name, args.label, args.days)
    except ValueError as exc:
        raise CommandError(str(exc), CANNOT_RUN) from exc
    finally:
        store.close()
    print(token)
    return DONE


def cmd_install_viewer(args: argparse.Namespace) -> int:
    try:
        served = ohifinstall.install(Path(args.tarball), Path(args.dest))
    except (ohifinstall.InstallError, OSError, tarfile.TarError) as exc:
        raise CommandError(str(exc), CANNOT_RUN) from exc
    print(f'OHIF {ohifinstall.VERSION} installed; set [viewer] ohif_dir = "{served.absolute()}"')
    return DONE


def add_commands(top: Any) -> None:
    """``radsetu hub ...``."""
    hub = top.add_parser("hub", help="the central hub")
    hsub = hub.add_subparsers(dest="command", required=True)
    s = command(
        hsub,
        "import",
        "hub import",
        cmd_import,
        help="ingest a pack file as if it came over MQTT",
        epilog=EPILOG_HUB_IMPORT,
    )
    s.add_argument("file", help="a file made by radsetu pack")
    s.add_argument("--data-dir", default="radsetu-hub-data", help="the hub's data folder")
    s.add_argument("-v", "--verbose", action="store_true")

    s = command(
        hsub,
        "serve",
        "hub serve",
        cmd_serve,
        help="start the hub's web API (gunicorn)",
        epilog=EPILOG_HUB_SERVE,
    )
    s.add_argument("--config", help="the hub's TOML config file")

    s = command(
        hsub,
        "ingest",
        "hub ingest",
        cmd_ingest,
        help="receive every box's uploads over MQTT (hub serve starts one)",
        epilog=EPILOG_HUB_INGEST,
    )
    s.add_argument("--config", help="the hub's TOML config file")
    s = command(
        hsub,
        "install-viewer",
        "hub install-viewer",
        cmd_install_viewer,
        help=f"install the OHIF viewer ({ohifinstall.VERSION}) from its npm tarball",
        epilog=EPILOG_INSTALL_VIEWER,
    )
    s.add_argument("tarball", help=f"@ohif/app's tarball ({ohifinstall.TARBALL})")
    s.add_argument("--dest", required=True, help="where it goes (a 'current' link is made)")
    _add_account_commands(hsub)


def _add_account_commands(hsub: Any) -> None:
    s = command(
        hsub,
        "user",
        "hub user",
        cmd_user,
        help="add or change a hub account (the password is read from standard input)",
        epilog=EPILOG_HUB_USER,
    )
    s.add_argument("action", choices=["add", "disable"])
    s.add_argument("name")
    s.add_argument("--role", choices=["radiologist", "operator", "admin"])
    s.add_argument(
        "--must-change",
        action="store_true",
        help="the password is to be changed at the first login (set by provisioning)",
    )
    s.add_argument(
        "--if-absent", action="store_true", help="leave an existing account as it is (provisioning)"
    )
    s.add_argument("--config", help="the hub's TOML config file")

    s = command(
        hsub,
        "token",
        "hub token",
        cmd_token,
        help="make an API token for a hub account (for scripts and Prometheus)",
        epilog=EPILOG_HUB_TOKEN,
    )
    s.add_argument("action", choices=["add", "revoke"])
    s.add_argument("name", help="the account the token acts as (its role applies)")
    s.add_argument("--label", default="", help="what the token is for (revoke: only that one)")
    s.add_argument("--days", type=float, default=90, help="how long a new token is good for")
    s.add_argument("--config", help="the hub's TOML config file")
