"""narinfo files and `nix-cache-info`, as Nix 2.8 writes and reads them.

Rendering follows NarInfo::to_string: fixed field order, `References:` always present
(empty when there are none), one `Sig:` line per signature. Parsing accepts what Nix
accepts: any field order, unknown fields (kept, so nothing is lost), NarHash in any
base, and requires StorePath, URL, NarHash and NarSize.
"""

from __future__ import annotations

from dataclasses import dataclass

from store.hash import Hash, HashError
from store.path import DEFAULT_STORE_DIR, StorePath, StorePathError


class NarInfoError(ValueError):
    """A narinfo Nix would reject; the message names the line."""


_KNOWN = (
    "StorePath",
    "URL",
    "Compression",
    "FileHash",
    "FileSize",
    "NarHash",
    "NarSize",
    "References",
    "Deriver",
    "System",
    "Sig",
    "CA",
)


@dataclass(frozen=True, slots=True)
class NarInfo:
    store_path: StorePath
    url: str
    nar_hash: Hash
    nar_size: int
    references: tuple[StorePath, ...] = ()
    compression: str = "none"
    file_hash: Hash | None = None
    file_size: int | None = None
    deriver: StorePath | None = None
    system: str | None = None
    sigs: tuple[str, ...] = ()
    ca: str | None = None
    extra: tuple[tuple[str, str], ...] = ()  # fields Nix 2.8 does not know, in order

    def fingerprint(self) -> str:
        """What Nix signs: `1;<path>;<narhash>;<narsize>;<sorted full refs>`."""
        return fingerprint(self.store_path, self.nar_hash, self.nar_size, self.references)

    def encode(self) -> str:
        lines = [
            f"StorePath: {self.store_path}",
            f"URL: {self.url}",
            f"Compression: {self.compression}",
        ]
        if self.file_hash is not None:
            lines.append(f"FileHash: {self.file_hash}")
        if self.file_size is not None:
            lines.append(f"FileSize: {self.file_size}")
        lines += [
            f"NarHash: {self.nar_hash}",
            f"NarSize: {self.nar_size}",
            "References: " + " ".join(r.base_name for r in self.references),
        ]
        if self.deriver is not None:
            lines.append(f"Deriver: {self.deriver.base_name}")
        if self.system:
            lines.append(f"System: {self.system}")
        lines += [f"Sig: {s}" for s in self.sigs]
        if self.ca:
            lines.append(f"CA: {self.ca}")
        lines += [f"{k}: {v}" for k, v in self.extra]
        return "\n".join(lines) + "\n"

    @classmethod
    def decode(cls, text: str, store_dir: str = DEFAULT_STORE_DIR) -> NarInfo:
        fields: dict[str, str] = {}
        sigs: list[str] = []
        extra: list[tuple[str, str]] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line:
                continue
            key, sep, value = line.partition(": ")
            if not sep:
                if line.endswith(":"):  # "References:" with nothing after it
                    key, value = line[:-1], ""
                else:
                    raise NarInfoError(
                        f"narinfo line {n}: expected 'Name: value', got {line[:80]!r}"
                    )
            if key == "Sig":
                sigs.append(value)
            elif key in _KNOWN:
                if key in fields:
                    raise NarInfoError(f"narinfo line {n}: field {key} given twice")
                fields[key] = value
            else:
                extra.append((key, value))

        def need(key: str) -> str:
            if key not in fields:
                raise NarInfoError(f"narinfo has no {key} field")
            return fields[key]

        def num(key: str) -> int:
            v = fields[key]
            if not v.isdigit():
                raise NarInfoError(f"narinfo {key} {v!r} is not a number")
            return int(v)

        try:
            path = StorePath.decode(need("StorePath"), store_dir)
            url = need("URL")
            if not url:
                raise NarInfoError("narinfo URL is empty")
            nar_hash = Hash.decode(need("NarHash"))
            need("NarSize")
            nar_size = num("NarSize")
            if nar_size == 0:
                raise NarInfoError("narinfo NarSize is 0")
            refs = tuple(
                StorePath.from_base_name(r, store_dir) for r in fields.get("References", "").split()
            )
            file_hash = Hash.decode(fields["FileHash"]) if "FileHash" in fields else None
            deriver_s = fields.get("Deriver")
            deriver = (
                StorePath.from_base_name(deriver_s, store_dir)
                if deriver_s and deriver_s != "unknown-deriver"
                else None
            )
        except (StorePathError, HashError) as e:
            raise NarInfoError(f"narinfo: {e}") from None
        return cls(
            store_path=path,
            url=url,
            nar_hash=nar_hash,
            nar_size=nar_size,
            references=refs,
            # Nix reads a missing Compression as bzip2 (the format's original default).
            compression=fields.get("Compression", "bzip2"),
            file_hash=file_hash,
            file_size=num("FileSize") if "FileSize" in fields else None,
            deriver=deriver,
            system=fields.get("System") or None,
            sigs=tuple(sigs),
            ca=fields.get("CA") or None,
            extra=tuple(extra),
        )


def fingerprint(
    path: StorePath, nar_hash: Hash, nar_size: int, references: tuple[StorePath, ...]
) -> str:
    if nar_hash.algo != "sha256":
        raise NarInfoError(f"Nix signs only sha256 NarHashes, not {nar_hash.algo}")
    refs = ",".join(sorted(str(r) for r in references))
    return f"1;{path};{nar_hash};{nar_size};{refs}"


@dataclass(frozen=True, slots=True)
class NixCacheInfo:
    store_dir: str = DEFAULT_STORE_DIR
    want_mass_query: bool = True
    priority: int = 30

    def encode(self) -> str:
        return (
            f"StoreDir: {self.store_dir}\n"
            f"WantMassQuery: {1 if self.want_mass_query else 0}\n"
            f"Priority: {self.priority}\n"
        )

    @classmethod
    def decode(cls, text: str) -> NixCacheInfo:
        fields = {}
        for n, line in enumerate(text.splitlines(), 1):
            if not line:
                continue
            key, sep, value = line.partition(":")
            if not sep:
                raise NarInfoError(
                    f"nix-cache-info line {n}: expected 'Name: value', got {line[:80]!r}"
                )
            fields[key.strip()] = value.strip()
        pr = fields.get("Priority", "50")
        if not pr.lstrip("-").isdigit():
            raise NarInfoError(f"nix-cache-info Priority {pr!r} is not a number")
        return cls(
            store_dir=fields.get("StoreDir", DEFAULT_STORE_DIR),
            want_mass_query=fields.get("WantMassQuery", "0") == "1",
            priority=int(pr),
        )
