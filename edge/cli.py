"""The box's commands: ``radsetu edge serve|import|check|held|resend|user`` and the
USB-stick tools ``radsetu pack`` and ``radsetu unpack``."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common.cli import (
    CANNOT_RUN,
    DONE,
    FAILED,
    CommandError,
    command,
    load_config,
    user_add,
    user_disable,
)
from common.cli import setup_logging as _setup_logging
from common.config import Config
from common.passwords import read_password
from edge import config as edge_config
from edge.accounts import AccountError, add_user, disable_user
from edge.boot import BoxRunning, check_store, lock_data_dir, open_store
from edge.holds import due_now, held_summary
from edge.importer import run_import
from edge.resend import delivered, resend
from edge.service import serve
from edge.sneakernet import PackError, pack, pick_for_link, sources_from_folder, sources_from_store
from edge.sneakernet import unpack as unpack_file
from edge.store import reader
from wire.errors import RemoteProtocolError
from wire.manifest import Priority

EPILOG_SERVE = "example: radsetu edge serve --config /etc/radsetu/edge.toml"
EPILOG_IMPORT = "example: radsetu edge import /media/usb/DICOMDIR --config /etc/radsetu/edge.toml"
EPILOG_CHECK = "example: radsetu edge check --config /etc/radsetu/edge.toml"
EPILOG_HELD = (
    "example: radsetu edge held --config /etc/radsetu/edge.toml "
    "(add --retry to try every held instance again at once)"
)
EPILOG_RESEND = (
    "example: radsetu edge resend --all --config /etc/radsetu/edge.toml (after the hub was "
    "rebuilt on an empty disk: every delivered study still on the box goes again); "
    "radsetu edge resend 1.2.840.113619.2.55.3.1 --config /etc/radsetu/edge.toml"
)
EPILOG_EDGE_USER = (
    "example: radsetu edge user add asha --role staff --language kn --config "
    "/etc/radsetu/edge.toml (asks for the password, or reads it from standard input); "
    "radsetu edge user disable asha --config /etc/radsetu/edge.toml (ends her sessions)"
)
EPILOG_PACK = "example: radsetu pack /media/usb/STUDY1 -o study1.radsetu"
EPILOG_UNPACK = "example: radsetu unpack study1.radsetu -o /tmp/study1"


def _config(path: str | None) -> Config:
    return load_config(edge_config.load, path)


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args.config)
    _setup_logging(config["log_level"])
    try:
        return serve(config)
    except BoxRunning as exc:
        raise CommandError(str(exc), CANNOT_RUN) from exc


def cmd_import(args: argparse.Namespace) -> int:
    config = _config(args.config)
    _setup_logging("WARNING" if not args.verbose else "INFO")
    path = Path(args.path)
    if not path.exists():
        raise CommandError(f"{path} does not exist (is the USB stick or CD mounted?)", CANNOT_RUN)
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
    return DONE if summary.ok else FAILED


def cmd_check(args: argparse.Namespace) -> int:
    config = _config(args.config)
    _setup_logging(config["log_level"])
    try:
        lock_data_dir(config)
    except BoxRunning as exc:
        raise CommandError(str(exc), CANNOT_RUN) from exc
    store = open_store(config)
    try:
        check_store(store)
    finally:
        store.close()
    return DONE


def cmd_held(args: argparse.Namespace) -> int:
    """What the box cannot send and why; --retry makes every one due now."""
    config = _config(args.config)
    with reader(config.data_dir) as db:
        if args.retry:
            with db.atomic():
                due_now(db)
        rows = db.execute(
            "SELECT study_uid, sop_instance_uid, reason, tries, first_at, next_try_ts "
            "FROM held ORDER BY first_at"
        ).fetchall()
        summary = held_summary(db)
    if not rows:
        print("nothing is held: every instance the box kept can be sent")
        return DONE
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
    return DONE


def cmd_resend(args: argparse.Namespace) -> int:
    """Send delivered studies again, whole (the running box packs them)."""
    if bool(args.study) == bool(args.all):
        raise CommandError("name the studies to send again, or give --all", CANNOT_RUN)
    config = _config(args.config)
    with reader(config.data_dir) as db:
        uids = delivered(db) if args.all else args.study
        outcomes = [resend(db, uid, "edge resend") for uid in uids]
    for o in outcomes:
        print(f"study {o.study_uid}: {o.why}")
    queued = [o for o in outcomes if o.queued]
    print(
        f"{len(queued)} of {len(outcomes)} studies queued to be sent again "
        f"({sum(o.size for o in queued) / 1e6:.1f} MB); the box sends them as it sends "
        "any study (GET /api/studies shows their state)"
    )
    return DONE if len(queued) == len(outcomes) else FAILED


def cmd_user(args: argparse.Namespace) -> int:
    config = _config(args.config)
    if args.action == "disable":
        store = open_store(config)
        return user_disable(
            store, args.name, lambda: disable_user(store.db, args.name), AccountError
        )
    password = read_password(args.name)
    store = open_store(config)
    language = args.language or config["language"]  # the clinic's, unless one is given
    return user_add(
        args,
        store,
        lambda: add_user(store.db, args.name, args.role, password, language, args.must_change),
        AccountError,
        f"{args.role}, {language}",
    )


def cmd_pack(args: argparse.Namespace) -> int:
    target = Path(args.study)
    if target.exists():
        sources, skipped = sources_from_folder(target)
        for name, reason in skipped:
            print(f"skipped {name}: {reason}", file=sys.stderr)
        box_id = args.box_id or "sneakernet"
    else:
        config = _config(args.config)
        if not (config.data_dir / "index.db").exists():
            raise CommandError(
                f"{target} is not a file or folder, and there is no box store at "
                f"{config.data_dir} to find it in as a study UID (give the box's --config)",
                CANNOT_RUN,
            )
        sources = sources_from_store(config.data_dir, args.study)
        box_id = args.box_id or config.box_id
    effort = args.effort or None
    if args.link_kbps and sources:
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
        raise CommandError(str(exc)) from exc
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
    return DONE


def cmd_unpack(args: argparse.Namespace) -> int:
    try:
        m, written = unpack_file(Path(args.file), Path(args.output))
    except (RemoteProtocolError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    versions = len(written) - len({e.sop_instance_uid for e in m.instances})
    print(
        f"unpacked study {m.study_uid}: {len(written)} instances written, every SHA-256 verified, "
        f"into {args.output}"
        + (f" ({versions} more versions of an instance named UID.<sha256>.dcm)" if versions else "")
    )
    return DONE


def add_commands(top: Any) -> None:
    """``radsetu edge ...`` and the top-level ``pack`` and ``unpack``."""
    edge = top.add_parser("edge", help="the clinic box")
    sub = edge.add_subparsers(dest="command", required=True)
    _add_service_commands(sub)
    _add_account_commands(sub)
    _add_outbox_commands(sub)
    _add_sneakernet_commands(top)


def _add_service_commands(sub: Any) -> None:
    s = command(
        sub,
        "serve",
        "edge serve",
        cmd_serve,
        help="start the box's services (DICOM receiver, web API)",
        epilog=EPILOG_SERVE,
    )
    s.add_argument("--config", help="TOML config file (default: built-in defaults)")

    s = command(
        sub,
        "import",
        "edge import",
        cmd_import,
        help="import studies from a folder, DICOMDIR or ZIP",
        epilog=EPILOG_IMPORT,
    )
    s.add_argument("path", help="folder, DICOMDIR or ZIP file")
    s.add_argument("--config", help="TOML config file (the same one the box serves with)")
    s.add_argument("-v", "--verbose", action="store_true", help="log each refused file")

    s = command(
        sub,
        "check",
        "edge check",
        cmd_check,
        help="check and repair the store (as at every start)",
        epilog=EPILOG_CHECK,
    )
    s.add_argument("--config", help="TOML config file")


def _add_account_commands(sub: Any) -> None:
    s = command(
        sub,
        "user",
        "edge user",
        cmd_user,
        help="add or change an account for the clinic's page (password from standard input)",
        epilog=EPILOG_EDGE_USER,
    )
    s.add_argument("action", choices=["add", "disable"])
    s.add_argument("name")
    s.add_argument("--role", default="staff", choices=["staff", "admin"])
    s.add_argument(
        "--must-change",
        action="store_true",
        help="the password is to be changed at the first login (set by provisioning)",
    )
    s.add_argument(
        "--language",
        default=None,
        choices=["en", "hi", "kn"],
        help="the pages' language for this person (default: the box's language key)",
    )
    s.add_argument(
        "--if-absent", action="store_true", help="leave an existing account as it is (provisioning)"
    )
    s.add_argument("--config", help="TOML config file (the same one the box serves with)")


def _add_outbox_commands(sub: Any) -> None:
    """What the box cannot send, and sending delivered studies again."""
    s = command(
        sub,
        "held",
        "edge held",
        cmd_held,
        help="list what the box cannot send (a file gone or damaged) and why",
        epilog=EPILOG_HELD,
    )
    s.add_argument("--retry", action="store_true", help="try every held instance again now")
    s.add_argument("--config", help="TOML config file (the same one the box serves with)")

    s = command(
        sub,
        "resend",
        "edge resend",
        cmd_resend,
        help="send delivered studies again, whole (for a hub that lost them)",
        epilog=EPILOG_RESEND,
    )
    s.add_argument("study", nargs="*", help="Study Instance UIDs of delivered studies")
    s.add_argument("--all", action="store_true", help="every delivered study still on the box")
    s.add_argument("--config", help="TOML config file (the same one the box serves with)")


def _add_sneakernet_commands(top: Any) -> None:
    s = command(
        top,
        "pack",
        "pack",
        cmd_pack,
        help="pack a study into one file (for a USB stick)",
        epilog=EPILOG_PACK,
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

    s = command(
        top,
        "unpack",
        "unpack",
        cmd_unpack,
        help="verify and unpack a pack file into a folder",
        epilog=EPILOG_UNPACK,
    )
    s.add_argument("file", help="the pack file")
    s.add_argument("-o", "--output", required=True, help="folder to write the instances to")
