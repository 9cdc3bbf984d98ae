"""The ``radsetu`` command: one entry point for the box's and the hub's tools. Each
side's commands live with it (``edge/cli.py``, ``hub/cli.py``); a side's code is
imported only when one of its commands runs, so a box never loads the hub."""

from __future__ import annotations

import argparse
import sys

from common.cli import run


def build_parser(areas: tuple[str, ...] = ("edge", "hub")) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="radsetu", description="RadSetu: scans from clinic to hub.")
    top = p.add_subparsers(dest="area", required=True)
    if "edge" in areas:
        from edge import cli as edge_cli

        edge_cli.add_commands(top)
    if "hub" in areas:
        from hub import cli as hub_cli

        hub_cli.add_commands(top)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # load only the side asked for; without one, both (for --help and usage errors)
    first = next((a for a in argv if not a.startswith("-")), "")
    areas = (
        ("hub",)
        if first == "hub"
        else ("edge",)
        if first in ("edge", "pack", "unpack")
        else (
            "edge",
            "hub",
        )
    )
    return run(build_parser(areas).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
