"""Key files on disk, as Nix writes them: one key, no trailing newline.

A secret key file must be readable by its owner alone (as ssh insists for its keys):
one that the group or others can read is refused rather than used, since anyone who
read it could sign builds in this builder's name.
"""

from __future__ import annotations

import os
import stat

from store import userfile
from store.userfile import UserFileError
from trust.key import KeyFormatError, PublicKey, SecretKey

# Nix's key files are a few dozen bytes; anything large is not a key.
_MAX_FILE = 4096


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and the fix."""


def _read(path: str) -> str:
    try:
        data = userfile.read(path, _MAX_FILE, "a key file")
    except UserFileError as e:
        raise KeyFileError(str(e)) from None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: not a key file (it is not ASCII text)") from None


def load_secret(path: str) -> SecretKey:
    text = _read(path)
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode) and mode & 0o077:
        if _is_public(text):
            raise KeyFileError(f"{path}: is a public key; a secret key file is needed here")
        raise KeyFileError(
            f"{path}: secret key is accessible by others (mode {stat.S_IMODE(mode):04o}); "
            f"refusing to use it. Restrict it with `chmod 600 {path}`"
        )
    try:
        return SecretKey.decode(text)
    except KeyFormatError as e:
        raise KeyFileError(f"{path}: {e}") from None


def _is_public(text: str) -> bool:
    try:
        PublicKey.decode(text)
    except KeyFormatError:
        return False
    return True


def load_public(path: str) -> PublicKey:
    try:
        return PublicKey.decode(_read(path))
    except KeyFormatError as e:
        raise KeyFileError(f"{path}: {e}") from None


def write_secret(path: str, key: SecretKey) -> None:
    """Create `path` with mode 0600; never overwrites (a lost key cannot be recovered)."""
    _create(path, key.encode(), 0o600)


def write_public(path: str, key: PublicKey) -> None:
    _create(path, key.encode(), 0o644)


def _create(path: str, text: str, mode: int) -> None:
    try:
        userfile.create(path, text.encode("ascii"), mode, "a key file")
    except UserFileError as e:
        raise KeyFileError(str(e)) from None
