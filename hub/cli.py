"""The hub's commands: ``radsetu hub serve|ingest|import|user|token|install-viewer|resend|
resends``."""

from __future__ import annotations

import argparse
import getpass
import tarfile
import time
from pathlib import Path
from typing import Any

from common.cli import (
    CANNOT_RUN,
    DONE,
    FAILED,
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
from hub import ohifinstall, resends
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

EPILOG_HUB_RESEND = (
    "example: radsetu hub resend --box clinic-07 --all --config /etc/radsetu/hub.toml (a "
    "hub rebuilt on an empty disk: the box sends again every delivered study it still "
    "holds); radsetu hub resend --box clinic-07 1.2.840.113619.2.55.3.1 (those studies). "
    "Exit status 0: the box queued them all; 1: it could not queue some (each is named); "
    "3: it has not answered within --wait seconds (the request stays queued and goes while "
    "the box is connected: radsetu hub resends --box clinic-07 shows its answer)"
)
EPILOG_HUB_RESENDS = "example: radsetu hub resends --box clinic-07 --config /etc/radsetu/hub.toml"
NOT_ANSWERED = 3


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


def cmd_resend(args: argparse.Namespace) -> int:
    """Ask a box to send delivered studies again; wait for its answer."""
    if bool(args.study) == bool(args.all):
        raise CommandError("name the studies to send again, or give --all", CANNOT_RUN)
    store = open_store(_config(args.config))
    try:
        rid = resends.ask(store, args.box, args.study, f"hub resend ({getpass.getuser()})")
        print(f"request {rid} queued for box {args.box}; waiting up to {args.wait:.0f} s "
              "for its answer")  # fmt: skip
        deadline = time.monotonic() + args.wait
        while (row := resends.requests(store, request_id=rid)[0])["answer"] is None:
            if time.monotonic() >= deadline:
                break
            time.sleep(1.0)
    except ValueError as exc:
        raise CommandError(f"box {args.box}: {exc}", CANNOT_RUN) from exc
    finally:
        store.close()
    return _show(row, every_study=True)


def _show(row: dict[str, Any], every_study: bool) -> int:
    what = "every delivered study" if row["every"] else f"{len(row['study_uids'])} studies"
    print(f"request {row['request_id']} to box {row['box_id']} for {what}, asked "
          f"{row['asked_at']} by {row['asked_by']}")  # fmt: skip
    answer = row["answer"]
    if answer is None:
        print(f"  not answered yet (sent {row['attempts']} times); it goes again while the "
              "box is connected, and its answer is kept")  # fmt: skip
        return NOT_ANSWERED
    refused = [s for s in answer["studies"] if not s["queued"]]
    for s in answer["studies"] if every_study else refused:
        print(f"  study {s['study_uid']}: {s['why']}")
    more = f" ({answer['unlisted']} not listed)" if answer["unlisted"] else ""
    print(f"  answered {row['answered_at']}: {answer['queued']} studies queued to be sent "
          f"again, {len(refused)} could not be{more}")  # fmt: skip
    return FAILED if refused else DONE


def cmd_resends(args: argparse.Namespace) -> int:
    store = open_store(_config(args.config))
    try:
        rows = resends.requests(store, box_id=args.box)
    finally:
        store.close()
    if not rows:
        print("no request to send studies again" + (f" to box {args.box}" if args.box else ""))
    codes = [_show(r, every_study=False) for r in rows]
    return max(codes, default=DONE) if args.box else DONE


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
    _add_resend_commands(hsub)


def _add_resend_commands(hsub: Any) -> None:
    s = command(
        hsub,
        "resend",
        "hub resend",
        cmd_resend,
        help="ask a box to send delivered studies again (a hub that lost them)",
        epilog=EPILOG_HUB_RESEND,
    )
    s.add_argument("study", nargs="*", help="Study Instance UIDs (as the hub lists them)")
    s.add_argument("--box", required=True, help="the box's id")
    s.add_argument("--all", action="store_true", help="every delivered study the box holds")
    s.add_argument("--wait", type=float, default=60.0, help="seconds to wait for the answer")
    s.add_argument("--config", help="the hub's TOML config file")
    s = command(
        hsub,
        "resends",
        "hub resends",
        cmd_resends,
        help="the requests to send studies again, newest first, with the boxes' answers",
        epilog=EPILOG_HUB_RESENDS,
    )
    s.add_argument("--box", default="", help="one box's requests only")
    s.add_argument("--config", help="the hub's TOML config file")


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
