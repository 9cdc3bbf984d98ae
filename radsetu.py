"""The ``radsetu`` command: one entry point for the box's and the hub's tools."""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any

EPILOG_SERVE = "example: radsetu edge serve --config /etc/radsetu/edge.toml"
EPILOG_IMPORT = "example: radsetu edge import /media/usb/DICOMDIR --config /etc/radsetu/edge.toml"
EPILOG_CHECK = "example: radsetu edge check --config /etc/radsetu/edge.toml"


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # pynetdicom narrates every PDU at INFO; its warnings are what matter to us
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def _load_config(path: str | None):  # type: ignore[no-untyped-def]
    from edge.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        print(f"radsetu: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc


def cmd_edge_serve(args: argparse.Namespace) -> int:
    from edge.boot import BoxRunning
    from edge.service import serve

    config = _load_config(args.config)
    _setup_logging(config["log_level"])
    try:
        return serve(config)
    except BoxRunning as exc:
        print(f"radsetu: {exc}", file=sys.stderr)
        return 2


def cmd_edge_import(args: argparse.Namespace) -> int:
    from edge.boot import open_store
    from edge.importer import run_import

    config = _load_config(args.config)
    _setup_logging("WARNING" if not args.verbose else "INFO")
    path = Path(args.path)
    if not path.exists():
        print(f"radsetu: {path} does not exist (is the USB stick or CD mounted?)", file=sys.stderr)
        return 2
    store = open_store(config)
    imp = config["import"]
    try:
        summary = run_import(
            store,
            path,
            config["store"]["max_instance_bytes"],
            imp["max_total_bytes"],
            imp["max_zip_ratio"],
        )
    finally:
        store.close()
    print("\n".join(summary.lines()))
    return 0 if summary.ok else 1


def cmd_edge_check(args: argparse.Namespace) -> int:
    from edge.boot import BoxRunning, check_store, lock_data_dir, open_store

    config = _load_config(args.config)
    _setup_logging(config["log_level"])
    try:
        lock_data_dir(config)
    except BoxRunning as exc:
        print(f"radsetu: {exc}", file=sys.stderr)
        return 2
    store = open_store(config)
    try:
        check_store(store)
    finally:
        store.close()
    return 0


EPILOG_HELD = (
    "example: radsetu edge held --config /etc/radsetu/edge.toml "
    "(add --retry to try every held instance again at once)"
)


def cmd_edge_held(args: argparse.Namespace) -> int:
    """What the box cannot send and why; --retry makes every one due now."""
    import time

    from edge.outbox import held_summary
    from edge.store import reader

    config = _load_config(args.config)
    with reader(config.data_dir) as db:
        if args.retry:
            with db.atomic():
                db.execute("UPDATE held SET next_try_ts=0")
        rows = db.execute(
            "SELECT study_uid, sop_instance_uid, reason, tries, first_at, next_try_ts "
            "FROM held ORDER BY first_at"
        ).fetchall()
        summary = held_summary(db)
    if not rows:
        print("nothing is held: every instance the box kept can be sent")
        return 0
    for study, sop, reason, tries, first_at, next_ts in rows:
        wait = max(0.0, next_ts - time.time())
        print(
            f"study {study} {'instance ' + sop if sop else '(the whole study)'}: {reason} "
            f"(since {first_at}, {tries} tries, next in {wait / 60:.0f} min)"
        )
    print(
        f"{summary['held_instances']} instances in {summary['held_studies']} studies held"
        + ("; all due now" if args.retry else "")
    )
    return 0


EPILOG_PACK = "example: radsetu pack /media/usb/STUDY1 -o study1.radsetu"
EPILOG_UNPACK = "example: radsetu unpack study1.radsetu -o /tmp/study1"


def cmd_pack(args: argparse.Namespace) -> int:
    from edge.sneakernet import PackError, pack, sources_from_folder, sources_from_store
    from wire.manifest import Priority

    target = Path(args.study)
    if target.exists():
        sources, skipped = sources_from_folder(target)
        for name, reason in skipped:
            print(f"skipped {name}: {reason}", file=sys.stderr)
        box_id = args.box_id or "sneakernet"
    else:
        config = _load_config(args.config)
        sources = sources_from_store(config.data_dir, args.study)
        box_id = args.box_id or config.box_id
    effort = args.effort or None
    if args.link_kbps:
        from edge.sneakernet import pick_for_link

        if sources:
            best, why = pick_for_link(sources, args.link_kbps * 1000 / 8)
            effort = best.pixel_effort
            print(why)
    try:
        result = pack(
            sources,
            Path(args.output),
            box_id,
            args.chunk_size * 1024,
            args.level,
            Priority.STAT if args.stat else Priority.ROUTINE,
            pixel_effort=effort,
        )
    except PackError as exc:
        for h in getattr(exc, "held", []):
            print(f"left out {h.source.path}: {h.reason}", file=sys.stderr)
        print(f"radsetu pack: {exc}", file=sys.stderr)
        return 1
    m = result.manifest
    for h in result.held:
        print(f"left out {h.source.path}: {h.reason}", file=sys.stderr)
    for fb in result.fallbacks:
        print(f"instance {fb.sop_instance_uid} went as zstd: {fb.reason}", file=sys.stderr)
    ratio = m.payload_bytes / max(m.stream_size, 1)
    codecs = Counter(e.codec for e in m.instances)
    effort = m.codec.get("pixel_effort")
    how = ", ".join(
        f"{n} as {c}" + (f" (effort {effort})" if c == "dicom-jxl" else "")
        for c, n in codecs.most_common()
    )
    print(
        f"packed study {m.study_uid}: {len(m.instances)} instances ({how}), "
        f"{m.payload_bytes / 1e6:.1f} MB -> {m.stream_size / 1e6:.1f} MB ({ratio:.2f}:1), "
        f"{m.chunk_count} chunks of {m.chunk_size // 1024} KiB, transfer {m.transfer_id} "
        f"-> {args.output}"
    )
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from edge.sneakernet import unpack
    from wire.errors import RemoteProtocolError

    try:
        m, written = unpack(Path(args.file), Path(args.output))
    except (RemoteProtocolError, OSError) as exc:
        print(f"radsetu unpack: {exc}", file=sys.stderr)
        return 1
    versions = len(written) - len({e.sop_instance_uid for e in m.instances})
    print(
        f"unpacked study {m.study_uid}: {len(written)} instances written, every SHA-256 verified, "
        f"into {args.output}"
        + (f" ({versions} more versions of an instance named UID.<sha256>.dcm)" if versions else "")
    )
    return 0


EPILOG_HUB_IMPORT = "example: radsetu hub import study1.radsetu --data-dir /var/lib/radsetu-hub"


def cmd_hub_import(args: argparse.Namespace) -> int:
    from hub.ingest import import_pack
    from hub.store import FileHubStore
    from wire.errors import RemoteProtocolError

    _setup_logging("INFO" if args.verbose else "WARNING")
    store = FileHubStore(Path(args.data_dir))
    try:
        ack = import_pack(store, args.file)
    except (RemoteProtocolError, OSError) as exc:
        print(f"radsetu hub import: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    if ack.get("verified"):
        print(f"transfer {ack['transfer_id']}: every instance verified and stored")
        return 0
    print(
        f"transfer {ack['transfer_id']}: NOT verified (held {ack['held']}, asked again "
        f"for {ack.get('resend', [])}); see the log",
        file=sys.stderr,
    )
    return 1


EPILOG_HUB_SERVE = "example: radsetu hub serve --config /etc/radsetu/hub.toml"


def _load_hub_config(path: str | None):  # type: ignore[no-untyped-def]
    from edge.config import ConfigError
    from hub import config as hub_config

    try:
        config = hub_config.load(path)
    except ConfigError as exc:
        print(f"radsetu: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    _setup_logging(config["log_level"])
    return config


def cmd_hub_serve(args: argparse.Namespace) -> int:
    from hub.service import serve

    return serve(_load_hub_config(args.config))


EPILOG_HUB_INGEST = "example: radsetu hub ingest --config /etc/radsetu/hub.toml"


def cmd_hub_ingest(args: argparse.Namespace) -> int:
    from hub.mqtt import run

    return run(_load_hub_config(args.config))


EPILOG_HUB_USER = (
    "example: radsetu hub user add dr-rao --role radiologist --config /etc/radsetu/hub.toml "
    "(asks for the password, or reads it from standard input)"
)


def cmd_hub_user_add(args: argparse.Namespace) -> int:
    from common.passwords import read_password
    from hub.store import FileHubStore
    from hub.users import UserError, add

    config = _load_hub_config(args.config)
    password = read_password(args.name)
    store = FileHubStore(config.data_dir)
    return _user_add(
        args, store, lambda: add(store, args.name, args.role, password), UserError, args.role
    )


def _user_add(args: argparse.Namespace, store: Any, add: Any, errors: Any, what: str) -> int:
    """``radsetu edge|hub user add``: add (or change) the account, or with
    ``--if-absent`` leave one that exists as it is; a refused name, role or password
    exits with 2 and says why."""
    try:
        if (
            args.if_absent
            and store.db.execute("SELECT 1 FROM users WHERE username=?", [args.name]).fetchone()
        ):
            print(f"user {args.name} exists: left as it is")
            return 0
        add()
    except errors as exc:
        print(f"radsetu {args.area} user add: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"user {args.name} ({what}) saved")
    return 0


EPILOG_EDGE_USER = (
    "example: radsetu edge user add asha --role staff --language kn --config "
    "/etc/radsetu/edge.toml (asks for the password, or reads it from standard input)"
)


def cmd_edge_user_add(args: argparse.Namespace) -> int:
    from common.passwords import read_password
    from edge.accounts import AccountError, add_user
    from edge.boot import open_store

    config = _load_config(args.config)
    password = read_password(args.name)
    store = open_store(config)
    return _user_add(
        args,
        store,
        lambda: add_user(store.db, args.name, args.role, password, args.language),
        AccountError,
        f"{args.role}, {args.language}",
    )


EPILOG_HUB_TOKEN = (
    "example: radsetu hub token add ops-bot --label prometheus --config /etc/radsetu/hub.toml "
    "(prints the token once; send it as 'Authorization: Bearer <token>')"
)


def cmd_hub_token_add(args: argparse.Namespace) -> int:
    from hub.access import add_token
    from hub.store import FileHubStore

    config = _load_hub_config(args.config)
    store = FileHubStore(config.data_dir)
    try:
        token = add_token(store, args.name, args.label)
    except ValueError as exc:
        print(f"radsetu hub token add: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(token)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radsetu", description="RadSetu: scans from clinic to hub.")
    top = p.add_subparsers(dest="area", required=True)
    edge = top.add_parser("edge", help="the clinic box")
    sub = edge.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "serve", help="start the box's services (DICOM receiver, web API)", epilog=EPILOG_SERVE
    )
    s.add_argument("--config", help="TOML config file (default: built-in defaults)")
    s.set_defaults(func=cmd_edge_serve)

    s = sub.add_parser(
        "import", help="import studies from a folder, DICOMDIR or ZIP", epilog=EPILOG_IMPORT
    )
    s.add_argument("path", help="folder, DICOMDIR or ZIP file")
    s.add_argument("--config", help="TOML config file (the same one the box serves with)")
    s.add_argument("-v", "--verbose", action="store_true", help="log each refused file")
    s.set_defaults(func=cmd_edge_import)

    s = sub.add_parser(
        "check", help="check and repair the store (as at every start)", epilog=EPILOG_CHECK
    )
    s.add_argument("--config", help="TOML config file")
    s.set_defaults(func=cmd_edge_check)

    s = sub.add_parser(
        "user",
        help="add or change an account for the clinic's page (password from standard input)",
        epilog=EPILOG_EDGE_USER,
    )
    s.add_argument("action", choices=["add"])
    s.add_argument("name")
    s.add_argument("--role", default="staff", choices=["staff", "admin"])
    s.add_argument("--language", default="en", choices=["en", "hi", "kn"])
    s.add_argument(
        "--if-absent", action="store_true", help="leave an existing account as it is (provisioning)"
    )
    s.add_argument("--config", help="TOML config file (the same one the box serves with)")
    s.set_defaults(func=cmd_edge_user_add)

    s = sub.add_parser(
        "held",
        help="list what the box cannot send (a file gone or damaged) and why",
        epilog=EPILOG_HELD,
    )
    s.add_argument("--retry", action="store_true", help="try every held instance again now")
    s.add_argument("--config", help="TOML config file (the same one the box serves with)")
    s.set_defaults(func=cmd_edge_held)

    s = top.add_parser(
        "pack", help="pack a study into one file (for a USB stick)", epilog=EPILOG_PACK
    )
    s.add_argument(
        "study", help="a folder or file of DICOM instances, or a study UID in the box's store"
    )
    s.add_argument("-o", "--output", required=True, help="the pack file to write")
    s.add_argument("--config", help="the box's config (to find a study UID in its store)")
    s.add_argument("--box-id", help="box id to put in the manifest")
    s.add_argument("--chunk-size", type=int, default=256, help="chunk size in KiB (256)")
    s.add_argument("--level", type=int, default=3, help="zstd level (3)")
    s.add_argument(
        "--effort",
        type=int,
        default=3,
        help="JPEG XL effort for pixel data: 3 fast (default), 7-8 for a thin "
        "link, 0 for plain zstd",
    )
    s.add_argument(
        "--link-kbps",
        type=int,
        help="pick the coder that delivers soonest over a link of this many kbit/s "
        "(a trial on the study's largest instance); overrides --effort",
    )
    s.add_argument("--stat", action="store_true", help="mark the transfer STAT")
    s.set_defaults(func=cmd_pack)

    s = top.add_parser(
        "unpack", help="verify and unpack a pack file into a folder", epilog=EPILOG_UNPACK
    )
    s.add_argument("file", help="the pack file")
    s.add_argument("-o", "--output", required=True, help="folder to write the instances to")
    s.set_defaults(func=cmd_unpack)

    hub = top.add_parser("hub", help="the central hub")
    hsub = hub.add_subparsers(dest="command", required=True)
    s = hsub.add_parser(
        "import", help="ingest a pack file as if it came over MQTT", epilog=EPILOG_HUB_IMPORT
    )
    s.add_argument("file", help="a file made by radsetu pack")
    s.add_argument("--data-dir", default="radsetu-hub-data", help="the hub's data folder")
    s.add_argument("-v", "--verbose", action="store_true")
    s.set_defaults(func=cmd_hub_import)

    s = hsub.add_parser("serve", help="start the hub's web API (gunicorn)", epilog=EPILOG_HUB_SERVE)
    s.add_argument("--config", help="the hub's TOML config file")
    s.set_defaults(func=cmd_hub_serve)

    s = hsub.add_parser(
        "ingest",
        help="receive every box's uploads over MQTT (hub serve starts one)",
        epilog=EPILOG_HUB_INGEST,
    )
    s.add_argument("--config", help="the hub's TOML config file")
    s.set_defaults(func=cmd_hub_ingest)

    s = hsub.add_parser(
        "user",
        help="add or change a hub account (the password is read from standard input)",
        epilog=EPILOG_HUB_USER,
    )
    s.add_argument("action", choices=["add"])
    s.add_argument("name")
    s.add_argument("--role", required=True, choices=["radiologist", "operator", "admin"])
    s.add_argument(
        "--if-absent", action="store_true", help="leave an existing account as it is (provisioning)"
    )
    s.add_argument("--config", help="the hub's TOML config file")
    s.set_defaults(func=cmd_hub_user_add)

    s = hsub.add_parser(
        "token",
        help="make an API token for a hub account (for scripts and Prometheus)",
        epilog=EPILOG_HUB_TOKEN,
    )
    s.add_argument("action", choices=["add"])
    s.add_argument("name", help="the account the token acts as (its role applies)")
    s.add_argument("--label", default="", help="what the token is for")
    s.add_argument("--config", help="the hub's TOML config file")
    s.set_defaults(func=cmd_hub_token_add)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
