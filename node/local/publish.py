"""Publishing: a tree, NAR or Nix store path into the local store, with a signed claim.
`ferry publish` does it here when no node runs, the node on its writer thread when one
does."""

from __future__ import annotations

from dataclasses import dataclass

from node.local.store import LocalStore
from store.manifest import Manifest
from store.source import OnProgress, Source, build_manifest
from trust.claim import SignedClaim, sign_manifest
from trust.key import SecretKey


@dataclass(frozen=True, slots=True)
class Publication:
    manifest: Manifest
    signed: list[SignedClaim]  # the claim made with the key, if one was given
    new_chunks: int  # chunks the store did not have
    new_bytes: int


def publish(
    store: LocalStore,
    src: Source,
    key: SecretKey | None,
    *,
    root: bool,
    on_progress: OnProgress | None = None,
) -> Publication:
    """Build `src`'s manifest into `store` (its chunks as they are cut), with a claim
    signed by `key`; a GC root unless `root` is false. Raises SourceError or StoreError;
    on either, nothing of it is kept."""
    with store.ingest() as ingest:
        manifest = build_manifest(src, on_chunk=ingest.add_chunk, on_progress=on_progress)
        signed = [sign_manifest(manifest, key)] if key else []
        ingest.commit(manifest, claims=signed, root=root)
    return Publication(manifest, signed, ingest.new_chunks, ingest.new_bytes)
