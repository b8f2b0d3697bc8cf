"""The ``reverserd`` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from reverserd import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reverserd", description=__doc__)
    parser.add_argument("--version", action="version", version=f"reverserd {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0
