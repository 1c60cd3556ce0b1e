"""The `--data-dir` option and opening the local store for a command."""

from __future__ import annotations

import argparse
import os

from node.cli import ui
from node.local import checkpoints
from node.local.datadir import default_data_dir
from node.local.errors import StoreError
from node.local.store import DEFAULT_BATCH, LocalStore, no_checkpoint


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="the ferry store (default: $FERRY_DATA_DIR, else /var/lib/ferry as root, "
        "else ~/.local/share/ferry)",
    )


def open_store(args: argparse.Namespace) -> LocalStore:
    data_dir = args.data_dir or default_data_dir()
    hook, batch = checkpoints.from_environment(os.environ)
    try:
        return LocalStore(
            data_dir, checkpoint=hook or no_checkpoint, batch_bytes=batch or DEFAULT_BATCH
        )
    except StoreError as e:
        ui.fail(str(e))
