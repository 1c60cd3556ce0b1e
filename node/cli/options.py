"""Options several commands share, defined without importing what the commands use."""

from __future__ import annotations

import argparse


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="the ferry store (default: $FERRY_DATA_DIR, else /var/lib/ferry as root, "
        "else ~/.local/share/ferry)",
    )


def store_path_arg(text: str) -> str:
    """A store path as typed: the slash a shell's completion leaves after a directory
    name is not part of it."""
    stripped = text.rstrip("/")
    return stripped or text
