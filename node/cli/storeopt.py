"""Opening the local store for a command (its `--data-dir`, see options.py)."""

from __future__ import annotations

import argparse
import os

from node.cli import ui
from node.local import checkpoints
from node.local.datadir import default_data_dir
from node.local.errors import StoreError
from node.local.store import DEFAULT_BATCH, LocalStore, no_checkpoint


def open_store(args: argparse.Namespace) -> LocalStore:
    data_dir = args.data_dir or default_data_dir()
    hook, batch = checkpoints.from_environment(os.environ)
    try:
        return LocalStore(
            data_dir, checkpoint=hook or no_checkpoint, batch_bytes=batch or DEFAULT_BATCH
        )
    except StoreError as e:
        ui.fail(str(e))
