"""The control API's messages: one frozen dataclass per request and per reply.

On the socket (control.py) each is a msgpack map: a request carries its `op`, a reply
its fields. The CLI's `--json` output is a reply's fields as they are here."""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar, Union

from node.daemon import outbox
from store.source import Source


class Failure(enum.StrEnum):
    """Why the node did not do what was asked; the CLI turns each into its exit status."""

    FAILED = "failed"  # it tried and could not (no peer had it, a disk error, ...)
    USAGE = "usage"  # the request names something wrong (a malformed store path, ...)
    REFUSED = "refused"  # the trust policy refused the path
    MALFORMED = "malformed"  # the request does not decode (another version of ferry?)


class ApiError(Exception):
    """A message that does not decode (a client or node of another version)."""


# --- requests


@dataclass(frozen=True, slots=True)
class StatusRequest:
    OP: ClassVar[str] = "status"


@dataclass(frozen=True, slots=True)
class PeersRequest:
    OP: ClassVar[str] = "peers"


@dataclass(frozen=True, slots=True)
class AuditRequest:
    """Read a builder key's whole claim log from the network and check it."""

    OP: ClassVar[str] = "audit"
    key: str  # name:base64


@dataclass(frozen=True, slots=True)
class RevokeClaimRequest:
    """Revoke the claims a builder key signed for a store path, in the key's log."""

    OP: ClassVar[str] = "revoke-claim"
    key: str  # a secret key file
    store_path: str


@dataclass(frozen=True, slots=True)
class FetchRequest:
    OP: ClassVar[str] = "fetch"
    store_path: str
    closure: bool = False


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """`source`'s file names are absolute: the node runs in another directory."""

    OP: ClassVar[str] = "publish"
    source: Source
    key: str | None = None  # a secret key file: sign a claim with it
    root: bool = True  # keep the path from `ferry gc`


@dataclass(frozen=True, slots=True)
class PublishStoreRequest:
    """Publish valid paths of a Nix store, read from Nix's database: `paths` (with their
    closures), or every valid path with `every`. Progress comes as PublishProgress."""

    OP: ClassVar[str] = "publish-store"
    paths: tuple[str, ...] = ()
    store: str | None = None  # as Nix's --store; None: the node's nix_store setting
    closure: bool = False
    every: bool = False
    key: str | None = None  # a secret key file: sign a claim for each path
    root: bool = True


@dataclass(frozen=True, slots=True)
class OutboxRequest:
    """Look at the outbox now (the post-build hook has just queued paths there)."""

    OP: ClassVar[str] = outbox.WAKE_OP


@dataclass(frozen=True, slots=True)
class ReloadRequest:
    """Read the settings file and the trust policy again (what SIGHUP does)."""

    OP: ClassVar[str] = "reload"


@dataclass(frozen=True, slots=True)
class StoreStatsRequest:
    OP: ClassVar[str] = "store-stats"


@dataclass(frozen=True, slots=True)
class StoreListRequest:
    OP: ClassVar[str] = "store-list"


@dataclass(frozen=True, slots=True)
class RootsRequest:
    OP: ClassVar[str] = "roots"
    action: str = "list"  # "add", "remove" or "list"
    store_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GcRequest:
    OP: ClassVar[str] = "gc"
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class VerifyRequest:
    """Progress comes as VerifyProgress."""

    OP: ClassVar[str] = "verify"
    repair: bool = False


@dataclass(frozen=True, slots=True)
class ExportRequest:
    """The NAR comes in NarPiece progress messages; the reply follows the last."""

    OP: ClassVar[str] = "export"
    store_path: str


@dataclass(frozen=True, slots=True)
class MaterializeRequest:
    OP: ClassVar[str] = "materialize"
    store_path: str
    dest: str  # absolute; must not exist


@dataclass(frozen=True, slots=True)
class ImageRequest:
    OP: ClassVar[str] = "image"
    store_path: str


@dataclass(frozen=True, slots=True)
class MountRequest:
    OP: ClassVar[str] = "mount"
    store_path: str
    dir: str
    backend: str = "auto"


@dataclass(frozen=True, slots=True)
class RealiseRequest:
    """Make store paths (with their closures) valid in the node's Nix store."""

    OP: ClassVar[str] = "realise"
    store_paths: tuple[str, ...]
    lazy: bool = True
    backend: str = "auto"


@dataclass(frozen=True, slots=True)
class UmountRequest:
    OP: ClassVar[str] = "umount"
    dir: str


@dataclass(frozen=True, slots=True)
class MountsRequest:
    OP: ClassVar[str] = "mounts"


Request = (
    StatusRequest
    | PeersRequest
    | FetchRequest
    | PublishRequest
    | PublishStoreRequest
    | OutboxRequest
    | ReloadRequest
    | StoreStatsRequest
    | StoreListRequest
    | RootsRequest
    | GcRequest
    | VerifyRequest
    | ExportRequest
    | MaterializeRequest
    | ImageRequest
    | MountRequest
    | RealiseRequest
    | UmountRequest
    | MountsRequest
    | AuditRequest
    | RevokeClaimRequest
)
REQUESTS: dict[str, type[Request]] = {
    c.OP: c
    for c in (
        StatusRequest,
        PeersRequest,
        FetchRequest,
        PublishRequest,
        PublishStoreRequest,
        OutboxRequest,
        ReloadRequest,
        StoreStatsRequest,
        StoreListRequest,
        RootsRequest,
        GcRequest,
        VerifyRequest,
        ExportRequest,
        MaterializeRequest,
        ImageRequest,
        MountRequest,
        RealiseRequest,
        UmountRequest,
        MountsRequest,
        AuditRequest,
        RevokeClaimRequest,
    )
}


def encode_request(req: Request) -> dict[str, Any]:
    return {"op": req.OP, **encode(req)}


def decode_request(raw: object) -> Request:
    if not isinstance(raw, dict) or raw.get("op") not in REQUESTS:
        op = raw.get("op") if isinstance(raw, dict) else None
        raise ApiError(f"unknown request {op!r}")
    return decode(REQUESTS[raw["op"]], {k: v for k, v in raw.items() if k != "op"})


# --- replies


@dataclass(frozen=True, slots=True)
class StoreSummary:
    paths: int
    complete_paths: int
    unique_chunks: int
    unique_bytes: int


@dataclass(frozen=True, slots=True)
class RelayService:
    """What this node carries for peers behind NAT (node.daemon.relay)."""

    serving: bool = False
    reservations: int = 0  # peers holding a slot
    circuits: int = 0  # open now
    circuits_total: int = 0
    bytes_relayed: int = 0  # both ways, all circuits
    refused: int = 0  # requests refused (not relaying, full, no slot, limits)
    ended_by_limit: int = 0  # circuits ended by their byte or time limit


@dataclass(frozen=True, slots=True)
class RelaySlots:
    """This node's own use of relays."""

    slots: tuple[str, ...] = ()  # where peers reach it through relays
    relayed_peers: tuple[str, ...] = ()  # peers connected only through a relay
    punched: int = 0  # relayed meetings that became direct connections
    punch_failed: int = 0


@dataclass(frozen=True, slots=True)
class Audit:
    """A builder's log as `ferry trust audit` found it."""

    key: str
    found: bool  # a peer served the log
    source: str | None = None  # the peer that served it
    size: int = 0
    root: str = ""  # hex
    time: int = 0  # the head's
    problems: tuple[str, ...] = ()  # each a sentence; none when the log holds together
    heads_checked: int = 0  # heads this node had seen, each checked against the log
    paths: int = 0  # store paths the log's claims name
    log: str = ""  # the log's id, hex: what a policy pins the key to (keys.NAME.log)


@dataclass(frozen=True, slots=True)
class RevokedClaim:
    """A claim its builder took back, as logged (trust.revocation)."""

    store_path: str
    nar_hash: str  # the revoked claim's
    signed_at: int  # the revoked claim's time
    index: int  # the revocation's leaf in the key's log
    log_size: int  # the log's size after it


@dataclass(frozen=True, slots=True)
class ClaimsRevoked:
    key: str  # name:base64
    revoked: tuple[RevokedClaim, ...]


@dataclass(frozen=True, slots=True)
class CaughtKey:
    """A builder key this node holds a proof of equivocation against."""

    key: str  # name:base64, as in a policy
    proof: str  # FORK, LEAVES or CLAIMS (trust.equivocation)
    raw: str  # the key's bytes, hex: the proof's file in <data-dir>/caught/


@dataclass(frozen=True, slots=True)
class Status:
    peer_id: str
    addrs: tuple[str, ...]
    data_dir: str
    peers: int
    policy: str | None
    served_blocks: int
    served_bytes: int
    dht: bool
    gossip: bool
    gateway: str | None
    gateway_key: str | None
    store: StoreSummary
    policy_in_use: PolicyInUse | None = None
    publishing: str | None = None  # what publishes by itself: "watching STORE", "hook"...
    outbox: int = 0  # paths queued to publish
    packing: int = 0  # paths published and not yet packed ahead
    packed_runs_served: int = 0  # runs answered with their packs (`node.local.packs`)
    reachability: str = "unknown"  # "public", "private" (peers cannot dial it) or "unknown"
    public_addr: str | None = None  # where peers reached it, when public
    relay: RelayService = field(default_factory=RelayService)
    relays: RelaySlots = field(default_factory=RelaySlots)
    caught: tuple[CaughtKey, ...] = ()  # keys that count for nothing: caught lying
    revoked_claims: int = 0  # claims their builders revoked, held here


@dataclass(frozen=True, slots=True)
class PeerRow:
    peer_id: str
    connected: bool
    addrs: tuple[str, ...]
    sent_bytes: int
    received_bytes: int
    bad: int
    banned_for: float
    last_problem: str | None


@dataclass(frozen=True, slots=True)
class Peers:
    peers: tuple[PeerRow, ...]


@dataclass(frozen=True, slots=True)
class FetchProgress:
    """A fetch session's counters, sent while it runs and with its result."""

    paths: int = 0
    paths_done: int = 0
    chunks: int = 0
    chunks_done: int = 0
    bytes: int = 0
    bytes_done: int = 0
    per_peer: dict[str, int] = field(default_factory=dict)
    rate: float = 0.0
    deduplicated_chunks: int = 0
    deduplicated_bytes: int = 0
    received_bytes: int = 0
    diff_chunks: int = 0
    diff_logical_bytes: int = 0
    diff_received_bytes: int = 0
    metadata_bytes: int = 0
    manifest_bytes: int = 0
    duplicate_bytes: int = 0


@dataclass(frozen=True, slots=True)
class FetchedPath:
    store_path: str
    nar_hash: str
    signers: tuple[str, ...]
    had: bool


@dataclass(frozen=True, slots=True)
class Fetched:
    fetched: tuple[FetchedPath, ...]
    progress: FetchProgress
    relayed: dict[str, str] = field(
        default_factory=dict
    )  # peer -> the relay its chunks came through

    def as_json(self) -> dict[str, Any]:
        """What `ferry fetch --json` prints: the paths, and the counters beside them."""
        return {
            "fetched": [encode(p) for p in self.fetched],
            **encode(self.progress),
            "relayed": dict(self.relayed),
        }


@dataclass(frozen=True, slots=True)
class Published:
    store_path: str
    nar_hash: str
    nar_size: int
    manifest_digest: str
    chunks: int
    unique_chunks: int
    new_chunks: int
    new_bytes: int
    root: bool
    claim: str | None
    signer: str | None
    data_dir: str
    # References this store does not hold: a peer cannot fetch the closure from here.
    unpublished: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PublishProgress:
    paths: int = 0
    paths_done: int = 0
    bytes: int = 0  # NAR bytes
    bytes_done: int = 0
    new_bytes: int = 0


@dataclass(frozen=True, slots=True)
class SkippedPath:
    store_path: str
    reason: str


@dataclass(frozen=True, slots=True)
class StorePublished:
    published: tuple[str, ...]  # references first
    skipped: tuple[SkippedPath, ...]  # paths that could not be read as Nix recorded them
    already: int  # paths asked for that this store held already (with the key's claim)
    nar_bytes: int
    new_chunks: int
    new_bytes: int
    signer: str | None
    data_dir: str


@dataclass(frozen=True, slots=True)
class Queued:
    waiting: int  # outbox entries not yet published


@dataclass(frozen=True, slots=True)
class PolicyInUse:
    """The trust policy a node decides with, as it loaded it."""

    file: str
    trusted: tuple[str, ...]  # public keys, name:base64
    threshold: int
    on_conflict: str


@dataclass(frozen=True, slots=True)
class Reloaded:
    policy: PolicyInUse | None
    changed: tuple[str, ...]  # settings now in effect with new values
    restart_needed: tuple[str, ...]  # settings changed in the file that need a restart


@dataclass(frozen=True, slots=True)
class StoreStatsReply:
    data_dir: str
    paths: int
    complete_paths: int
    roots: int
    nar_bytes: int
    chunk_bytes: int
    unique_chunks: int
    unique_bytes: int
    slab_disk_bytes: int
    index_bytes: int


@dataclass(frozen=True, slots=True)
class ListedPath:
    store_path: str
    nar_hash: str
    nar_size: int
    manifest_digest: str
    root: bool
    missing_chunks: int


@dataclass(frozen=True, slots=True)
class StoreListing:
    paths: tuple[ListedPath, ...]


@dataclass(frozen=True, slots=True)
class Roots:
    roots: tuple[str, ...]
    changed: tuple[str, ...] = ()  # the paths added or removed
    not_roots: tuple[str, ...] = ()  # asked to remove, but were not roots


@dataclass(frozen=True, slots=True)
class GcDone:
    removed_paths: tuple[str, ...]
    freed_chunks: int
    freed_bytes: int
    dry_run: bool


@dataclass(frozen=True, slots=True)
class VerifyProgress:
    bytes: int
    bytes_done: int


@dataclass(frozen=True, slots=True)
class CorruptChunk:
    digest: str
    problem: str


@dataclass(frozen=True, slots=True)
class BadPath:
    store_path: str
    problem: str


@dataclass(frozen=True, slots=True)
class Verified:
    ok: bool
    chunks: int
    bytes: int
    repaired: bool
    corrupt: tuple[CorruptChunk, ...]
    bad_paths: tuple[BadPath, ...]


@dataclass(frozen=True, slots=True)
class NarPiece:
    data: bytes


@dataclass(frozen=True, slots=True)
class Exported:
    store_path: str
    nar_size: int


@dataclass(frozen=True, slots=True)
class Materialized:
    store_path: str
    dest: str


@dataclass(frozen=True, slots=True)
class Image:
    data: bytes
    devices: tuple[str, ...]
    inodes: int
    absent_chunks: int


@dataclass(frozen=True, slots=True)
class Unmounted:
    dir: str
    store_path: str
    backend: str


@dataclass(frozen=True, slots=True)
class MountRow:
    dir: str
    store_path: str
    backend: str
    bytes_present: int | None  # None for a materialized tree
    bytes_total: int | None


@dataclass(frozen=True, slots=True)
class RealisedPath:
    store_path: str
    how: str  # "mounted" (lazily), "written" (whole), or "valid" (Nix had it already)
    backend: str | None  # for "mounted"
    bytes_present: int | None  # of the file data, for "mounted"
    bytes_total: int | None


@dataclass(frozen=True, slots=True)
class Realised:
    paths: tuple[RealisedPath, ...]


@dataclass(frozen=True, slots=True)
class MountTable:
    mounts: tuple[MountRow, ...]


Reply = (
    Status
    | Peers
    | Fetched
    | Published
    | StorePublished
    | Queued
    | Reloaded
    | StoreStatsReply
    | StoreListing
    | Roots
    | GcDone
    | Verified
    | Exported
    | Materialized
    | Image
    | MountRow
    | Realised
    | Unmounted
    | MountTable
    | Audit
    | ClaimsRevoked
)

# Which reply each request gets.
REPLIES: dict[type[Any], type[Any]] = {
    StatusRequest: Status,
    PeersRequest: Peers,
    AuditRequest: Audit,
    RevokeClaimRequest: ClaimsRevoked,
    FetchRequest: Fetched,
    PublishRequest: Published,
    PublishStoreRequest: StorePublished,
    OutboxRequest: Queued,
    ReloadRequest: Reloaded,
    StoreStatsRequest: StoreStatsReply,
    StoreListRequest: StoreListing,
    RootsRequest: Roots,
    GcRequest: GcDone,
    VerifyRequest: Verified,
    ExportRequest: Exported,
    MaterializeRequest: Materialized,
    ImageRequest: Image,
    MountRequest: MountRow,
    RealiseRequest: Realised,
    UmountRequest: Unmounted,
    MountsRequest: MountTable,
}


# What the progress messages of a request hold (requests not here send none).
PROGRESS: dict[type[Any], type[Any]] = {
    FetchRequest: FetchProgress,
    RealiseRequest: FetchProgress,
    PublishStoreRequest: PublishProgress,
    VerifyRequest: VerifyProgress,
    ExportRequest: NarPiece,
}


# --- the codec: dataclasses to plain maps and back, checking each field's type

T = TypeVar("T")


def encode(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        out[f.name] = _encode_value(getattr(obj, f.name))
    return out


def _encode_value(v: Any) -> Any:
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return encode(v)
    if isinstance(v, tuple):
        return [_encode_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _encode_value(x) for k, x in v.items()}
    return v


def decode(cls: type[T], raw: object) -> T:
    if not isinstance(raw, dict):
        raise ApiError(f"{cls.__name__}: expected a map, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ApiError(f"{cls.__name__}: {f.name} is missing")
            continue
        kwargs[f.name] = _decode_value(hints[f.name], raw[f.name], f"{cls.__name__}.{f.name}")
    return cls(**kwargs)


def _decode_value(t: Any, v: object, where: str) -> Any:
    origin = typing.get_origin(t)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(t):
            try:
                return _decode_value(option, v, where)
            except ApiError:
                continue
        raise ApiError(f"{where}: unexpected {type(v).__name__}")
    if t is type(None):
        if v is None:
            return None
        raise ApiError(f"{where}: expected nothing")
    if isinstance(t, type) and dataclasses.is_dataclass(t):
        return decode(t, v)
    if origin is tuple:
        if not isinstance(v, (list, tuple)):
            raise ApiError(f"{where}: expected a list")
        (item, _) = typing.get_args(t)
        return tuple(_decode_value(item, x, where) for x in v)
    if origin is dict:
        if not isinstance(v, dict):
            raise ApiError(f"{where}: expected a map")
        kt, vt = typing.get_args(t)
        return {_decode_value(kt, k, where): _decode_value(vt, x, where) for k, x in v.items()}
    if t is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if isinstance(t, type) and (not isinstance(v, t) or (t is int and isinstance(v, bool))):
        raise ApiError(f"{where}: expected {t.__name__}, got {type(v).__name__}")
    return v
