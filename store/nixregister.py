"""Making paths valid to Nix without Nix reading them: `nix-store --register-validity
--hash-given`, and the questions ferry asks Nix around it (which paths are invalid,
who refers to a path, delete a path).

The registration text is Nix 2.8's `decodeValidPathInfo` with a given hash; per path:

    <store path>
    sha256:<nix32 NarHash>
    <NarSize>
    <deriver, or an empty line>
    <number of references>
    <one reference per line>

Nix registers a batch at once, and refuses it unless every reference is either valid
already or in the batch. It re-applies its canonical metadata (mode 0444/0555, time 1,
owner) to each path, which on a read-only mount works only if nothing needs changing.
"""

from __future__ import annotations

from collections.abc import Sequence

from store.hash import Hash, HashError
from store.nixcli import PathInfo, nix_command
from store.path import StorePath, StorePathError


class RegistrationError(ValueError):
    """Text that is not a registration; the message says where."""


def encode(infos: Sequence[PathInfo]) -> bytes:
    out = []
    for i in infos:
        out += [
            str(i.path),
            i.nar_hash.encode(),
            str(i.nar_size),
            str(i.deriver) if i.deriver else "",
            str(len(i.references)),
            *(str(r) for r in i.references),
        ]
    return "".join(f"{line}\n" for line in out).encode()


def decode(data: bytes, store_dir: str) -> list[PathInfo]:
    lines = data.decode().split("\n")
    if lines.pop() != "":
        raise RegistrationError("the text does not end with a newline")
    infos = []
    at = 0

    def take() -> str:
        nonlocal at
        if at >= len(lines):
            raise RegistrationError(f"line {at + 1}: the text ends inside a path's record")
        at += 1
        return lines[at - 1]

    try:
        while at < len(lines):
            path = StorePath.decode(take(), store_dir)
            nar_hash = Hash.decode(take())
            nar_size = int(take())
            deriver = take()
            count = int(take())
            if count < 0 or nar_size < 0:
                raise RegistrationError(f"line {at}: a negative count")
            refs = tuple(StorePath.decode(take(), store_dir) for _ in range(count))
            infos.append(
                PathInfo(
                    path,
                    nar_hash,
                    nar_size,
                    refs,
                    StorePath.decode(deriver, store_dir) if deriver else None,
                )
            )
    except (ValueError, StorePathError, HashError) as e:
        if isinstance(e, RegistrationError):
            raise
        raise RegistrationError(f"line {at}: {e}") from None
    return infos


def _store_args(store: str | None) -> list[str]:
    return ["--store", store] if store else []


def invalid(paths: Sequence[StorePath], store: str | None) -> set[StorePath]:
    """Those of `paths` Nix does not hold as valid (it makes its database if it has none)."""
    if not paths:
        return set()
    out = nix_command(
        "nix-store",
        *_store_args(store),
        "--check-validity",
        "--print-invalid",
        *(str(p) for p in paths),
    )
    named = set(out.split())
    return {p for p in paths if str(p) in named}


def register(infos: Sequence[PathInfo], store: str | None) -> None:
    """Make `infos` valid, references before referrers (NixError if Nix refuses)."""
    if infos:
        nix_command(
            "nix-store",
            *_store_args(store),
            "--register-validity",
            "--hash-given",
            input=encode(infos),
        )


def referrers(path: StorePath, store: str | None) -> list[str]:
    """The valid paths that refer to `path`, other than itself."""
    out = nix_command("nix-store", *_store_args(store), "--query", "--referrers", str(path))
    return [p for p in out.split() if p != str(path)]


def delete(path: StorePath, store: str | None) -> None:
    nix_command("nix-store", *_store_args(store), "--delete", str(path))
