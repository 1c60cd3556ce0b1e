"""Asking the Nix CLI about store paths (`nix path-info --json`), with or without a
chroot store (`--store DIR`, as Nix's own option)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from store.hash import Hash, HashError
from store.path import StorePath, StorePathError


class NixError(RuntimeError):
    """Nix is missing or refused a query; the message carries what Nix said."""


@dataclass(frozen=True, slots=True)
class PathInfo:
    path: StorePath
    nar_hash: Hash
    nar_size: int
    references: tuple[StorePath, ...]
    deriver: StorePath | None


def store_root(store: str | None) -> str:
    """The directory a store's `/nix/store/...` paths live under ('' for the real one).

    Accepts what `--store` accepts for a local store: a plain directory (a chroot
    store), `local?root=DIR`, `local`, `auto`, or nothing.
    """
    if store in (None, "", "auto", "local", "daemon"):
        return ""
    if store.startswith("/"):
        return store.rstrip("/")
    url = urlsplit(store)
    if url.scheme == "" and url.path == "local":
        roots = parse_qs(url.query).get("root")
        if roots:
            return roots[0].rstrip("/")
        return ""
    raise NixError(
        f"--store {store!r}: ferry reads only local stores (a directory or 'local?root=DIR')"
    )


def physical_path(path: StorePath, store: str | None) -> str:
    return store_root(store) + str(path)


def nix_command(*args: str, input: bytes | None = None) -> str:
    """Run a Nix command (its name first); its standard output, or NixError with the
    last line Nix wrote to standard error."""
    exe = shutil.which(args[0])
    if exe is None:
        raise NixError(
            f"`{args[0]}` is not installed; install Nix (Debian: apt-get install nix-bin)"
        )
    proc = subprocess.run([exe, *args[1:]], capture_output=True, input=input)
    if proc.returncode:
        msg = proc.stderr.decode(errors="replace").strip().splitlines()
        raise NixError(
            f"`{' '.join(args[:4])}` failed: {msg[-1] if msg else f'exit {proc.returncode}'}"
        )
    return proc.stdout.decode(errors="replace")


def _path_infos(path: StorePath, store: str | None, *flags: str) -> list[dict[str, Any]]:
    """`nix path-info --json` of `path` (with `flags`); NixError for a path Nix lacks."""
    store_args = ["--store", store] if store else []
    out = nix_command(
        "nix",
        "--extra-experimental-features",
        "nix-command",
        "path-info",
        "--json",
        *flags,
        *store_args,
        str(path),
    )
    try:
        infos = json.loads(out)
        invalid = [i["path"] for i in infos if i.get("valid") is False]
    except (ValueError, KeyError, TypeError) as e:
        raise NixError(f"unexpected `nix path-info --json` output for {path}: {e}") from None
    if invalid:
        where = f"the Nix store at {store}" if store else "the Nix store"
        raise NixError(
            f"{invalid[0]} is not a valid path in {where}: Nix has not built or substituted "
            "it (build it first, or publish a directory with --store-path)"
        )
    return list(infos)


def path_info(path: StorePath, store: str | None = None) -> PathInfo:
    """NarHash, NarSize, references and deriver of a valid path, as Nix records them."""
    infos = _path_infos(path, store)
    try:
        (info,) = infos
        sd = path.store_dir
        return PathInfo(
            path=StorePath.decode(info["path"], sd),
            nar_hash=Hash.decode(info["narHash"]),
            nar_size=int(info["narSize"]),
            references=tuple(StorePath.decode(r, sd) for r in info.get("references", [])),
            deriver=StorePath.decode(info["deriver"], sd) if info.get("deriver") else None,
        )
    except (ValueError, KeyError, TypeError, StorePathError, HashError) as e:
        raise NixError(f"unexpected `nix path-info --json` output for {path}: {e}") from None


def is_available() -> bool:
    return shutil.which("nix-store") is not None
