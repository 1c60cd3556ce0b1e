"""Opening the local store for a command (its `--data-dir`, see options.py)."""

from __future__ import annotations

import argparse
import os

from node.cli import ui
from node.local import checkpoints
from node.local.datadir import default_data_dir
from node.local.errors import StoreError
from node.local.store import DEFAULT_BATCH, LocalStore, no_checkpoint


def open_store(args: argparse.Namespace, *, create: bool = False) -> LocalStore:
    """The store in the command's data directory. A directory named by --data-dir or
    FERRY_DATA_DIR is made only with `create` (`node run`): a mistyped one must not become
    a new, empty store that a path is published into. The built-in default is made on
    first use."""
    data_dir = args.data_dir or default_data_dir()
    named = bool(args.data_dir or os.environ.get("FERRY_DATA_DIR"))  # else the built-in default
    if not create and named and not os.path.isdir(data_dir):
        ui.fail(
            f"no ferry data directory at {data_dir} (is the path right? "
            f"`ferry init --data-dir {data_dir}` makes one)"
        )
    hook, batch = checkpoints.from_environment(os.environ)
    try:
        return LocalStore(
            data_dir, checkpoint=hook or no_checkpoint, batch_bytes=batch or DEFAULT_BATCH
        )
    except StoreError as e:
        ui.fail(str(e))


def node_running(args: argparse.Namespace) -> bool:
    """Whether a node runs on the command's data directory: then it holds the store, and
    the command asks it."""
    from node.daemon import control

    return control.running(os.path.abspath(args.data_dir or default_data_dir()))
