"""A manifest plus a source of chunks gives back the tree on disk, as `nix-store
--restore` would write it: directories, regular and executable files, symlinks.

The tree is built beside the destination and renamed into place at the end, so the
destination either does not exist or holds the whole, verified tree. It is not synced:
a power cut may lose it, but the store it came from can always write it again.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from store.chunking import digest
from store.export import ChunkCorrupt, ChunkSource
from store.manifest import EntryKind, Manifest


class RestoreError(Exception):
    """The tree cannot be written where asked; the message says why."""


def restore(
    manifest: Manifest,
    source: ChunkSource,
    dest: str,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    dest = os.path.abspath(dest)
    if os.path.lexists(dest):
        raise RestoreError(f"{dest} already exists; give a path that does not exist yet")
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise RestoreError(f"{parent}: no such directory")
    tmp = os.path.join(parent, f".{os.path.basename(dest)}.ferry-partial-{os.getpid()}")
    try:
        _write(manifest, source, tmp, on_progress)
        os.rename(tmp, dest)
    except BaseException:
        _remove(tmp)
        raise


def _write(
    manifest: Manifest, source: ChunkSource, root: str, on_progress: Callable[[int], None] | None
) -> None:
    spans = manifest.chunking
    base = os.fsencode(root)  # names in a NAR are bytes, not necessarily UTF-8
    for e in manifest.entries:
        path = os.path.join(base, e.path) if e.path else base
        if e.kind is EntryKind.DIRECTORY:
            os.mkdir(path, 0o755)
        elif e.kind is EntryKind.SYMLINK:
            os.symlink(e.inline, path)
        else:
            # The modes `nix-store --restore` gives (before the umask): the executable
            # bit is the only permission a NAR records.
            mode = 0o777 if e.kind is EntryKind.EXECUTABLE else 0o666
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
            with os.fdopen(fd, "wb") as f:
                if not e.chunks:
                    f.write(e.inline)
                for (_, length), d in zip(spans.spans(e.size), e.chunks):
                    data = source.read_chunk(d)
                    if len(data) != length or digest(data) != d:
                        raise ChunkCorrupt(d, f"wrong bytes for {e.path!r}")
                    f.write(data)
                    if on_progress:
                        on_progress(length)


def _remove(path: str) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)
