"""The ``radsetu`` command: one entry point for the box's and the hub's tools."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

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
    from edge.service import serve

    config = _load_config(args.config)
    _setup_logging(config["log_level"])
    return serve(config)


def cmd_edge_import(args: argparse.Namespace) -> int:
    from edge.importer import run_import
    from edge.service import open_store

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
    from edge.service import check_store, open_store

    config = _load_config(args.config)
    _setup_logging(config["log_level"])
    store = open_store(config)
    try:
        check_store(store)
    finally:
        store.close()
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
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
