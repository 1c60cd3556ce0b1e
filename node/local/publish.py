"""Publishing: a tree, NAR or Nix store path into the local store, with a signed claim.
`ferry publish` does it here when no node runs, the node on its writer thread when one
does."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from node.local.index import Index
from node.local.store import LocalStore
from store.build import ModifiedStorePath, from_store_path
from store.dump import DumpError
from store.manifest import Manifest
from store.nixcli import NixError, PathInfo
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


@dataclass(frozen=True, slots=True)
class Skipped:
    """A path not published, and why (Nix collected it meanwhile, it changed on disk)."""

    store_path: str
    reason: str


# A batch is committed (one sync, one transaction) once it holds this many paths or
# bytes: small enough that a crash loses little work, large enough that thousands of
# small paths do not cost a sync each.
BATCH_PATHS = 256
BATCH_BYTES = 64 << 20


def already_published(index: Index, store_path: str, key: SecretKey | None) -> bool:
    """Whether `store_path` is complete in the store and, with `key`, carries its claim:
    publishing it again would add nothing."""
    row = index.path(store_path)
    if row is None or index.missing_chunks(store_path):
        return False
    if key is None:
        return True
    builder = key.public.encode()
    return (
        index.scalar(
            "SELECT count(*) FROM claims WHERE store_path = ? AND builder = ?", store_path, builder
        )
        > 0
    )


@dataclass
class Bulk:
    """What publishing many store paths did so far."""

    published: list[tuple[Manifest, list[SignedClaim]]]
    skipped: list[Skipped]
    new_chunks: int = 0
    new_bytes: int = 0
    nar_bytes: int = 0
    already: int = 0  # paths asked for that the store held (not counted above)


def publish_store_paths(
    store: LocalStore,
    infos: Sequence[PathInfo],
    nix_store: str | None,
    key: SecretKey | None,
    *,
    root: bool,
    on_batch: Callable[[Bulk, Bulk], None] | None = None,
) -> Bulk:
    """Publish valid Nix store paths (`infos`, read from Nix, in the order given: put
    references first) in batches. A path that cannot be read as Nix recorded it is
    skipped with its reason, not fatal to the rest. `on_batch(batch, total)` hears of
    each committed batch (for progress, and to announce it while the next is built)."""
    total = Bulk([], [])
    batch = Bulk([], [])
    with store.ingest() as ingest:

        def commit() -> None:
            nonlocal batch
            ingest.commit_many([(m, signed, root) for m, signed in batch.published])
            batch.new_chunks = ingest.new_chunks - total.new_chunks
            batch.new_bytes = ingest.new_bytes - total.new_bytes
            total.published += batch.published
            total.skipped += batch.skipped
            total.new_chunks, total.new_bytes = ingest.new_chunks, ingest.new_bytes
            total.nar_bytes += batch.nar_bytes
            if on_batch is not None:
                on_batch(batch, total)
            batch = Bulk([], [])

        for info in infos:
            try:
                manifest = from_store_path(
                    info.path, store=nix_store, on_chunk=ingest.add_chunk, info=info
                )
            except (ModifiedStorePath, DumpError, OSError, NixError) as e:
                reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                batch.skipped.append(Skipped(str(info.path), reason))
                continue
            batch.published.append((manifest, [sign_manifest(manifest, key)] if key else []))
            batch.nar_bytes += manifest.nar_size
            if len(batch.published) >= BATCH_PATHS or batch.nar_bytes >= BATCH_BYTES:
                commit()
        if batch.published or batch.skipped:
            commit()
    return total
