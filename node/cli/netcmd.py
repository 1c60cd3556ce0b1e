"""`ferry fetch`, `ferry peers`, `ferry status`: commands answered by the running node."""

from __future__ import annotations

import argparse
import os
from typing import Any, NoReturn

import trio

from node.cli import Commands, options, ui
from node.daemon import api, control
from node.daemon.control import ControlError
from node.local.datadir import default_data_dir

EXIT_CODES = (
    "exit status: 0 fetched, 1 failed (see the message), 2 bad usage, 3 refused by the trust policy"
)


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "fetch",
        description="Ask the running node to fetch STORE_PATH: it collects build claims from its peers, "
        "accepts the path only if the trust policy's quorum of builders signed the same result, then "
        "fetches the chunks it lacks from several peers at once, checking every chunk's BLAKE3. "
        "An interrupted fetch resumes where it stopped.",
        epilog=EXIT_CODES,
    )
    p.add_argument(
        "store_path",
        metavar="STORE_PATH",
        type=options.store_path_arg,
        help="full store path, e.g. /nix/store/<hash>-hello-2.12",
    )
    p.add_argument(
        "--closure", action="store_true", help="also fetch every path it refers to, recursively"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    options.add_data_dir(p)
    p.set_defaults(run=_fetch)

    p = sub.add_parser(
        "peers",
        description="Peers the running node is connected to or has banned, with traffic.",
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    options.add_data_dir(p)
    p.set_defaults(run=_peers)

    p = sub.add_parser(
        "status",
        description="The running node's peer ID, addresses, peers and store summary.",
    )
    p.add_argument("--json", action="store_true", help="print as JSON")
    options.add_data_dir(p)
    p.set_defaults(run=_status)


def data_dir(args: argparse.Namespace) -> str:
    return os.path.abspath(args.data_dir or default_data_dir())


def request(args: argparse.Namespace, req: api.Request, on_progress: Any = None) -> Any:
    """The node's reply to `req` (the reply type api.REPLIES names); a refusal ends the
    command with the node's message and exit status."""
    try:
        return trio.run(control.call, data_dir(args), req, on_progress)
    except ControlError as e:
        fail(e)


# The exit status for each way the node can fail a request (see EXIT_CODES above).
EXIT = {
    api.Failure.FAILED: 1,
    api.Failure.USAGE: 2,
    api.Failure.REFUSED: 3,
    api.Failure.MALFORMED: 3,
}


def fetch_with_progress(
    data_dir: str, req: api.FetchRequest | api.RealiseRequest, label: str, waiting: str
) -> Any:
    """A fetch (or realise) through the node on `data_dir`, drawn as a bar on a
    terminal; its reply, or ControlError."""
    with ui.transfer_bar(label, waiting) as update:

        def show(p: api.FetchProgress) -> None:
            chunks = f"{p.chunks_done:,}/{p.chunks:,} chunks from {len(p.per_peer)} peers"
            update(p.bytes or None, p.bytes_done, chunks)

        return trio.run(control.call, data_dir, req, show)


def fail(e: ControlError) -> NoReturn:
    ui.fail(str(e), EXIT[e.failure])


def _fetch(args: argparse.Namespace) -> None:
    req = api.FetchRequest(args.store_path, closure=args.closure)
    try:
        if args.json:
            fetched = trio.run(control.call, data_dir(args), req)
        else:
            fetched = fetch_with_progress(data_dir(args), req, "fetching", "asking peers")
    except ControlError as e:
        fail(e)
    if args.json:
        ui.print_json(fetched.as_json())
        return
    for p in fetched.fetched:
        how = "already here" if p.had else f"signed by {', '.join(p.signers)}"
        ui.out.print(f"fetched {p.store_path}  ({how})", soft_wrap=True, markup=False)
    result = api.encode(fetched.progress)
    peers = ", ".join(f"{peer[-8:]}: {n:,} B" for peer, n in sorted(result["per_peer"].items()))
    ui.out.print(
        f"  {result['chunks_done']:,} chunks, {result['bytes_done']:,} bytes"
        + (f" from {len(result['per_peer'])} peers ({peers})" if peers else ""),
        soft_wrap=True,
        markup=False,
    )
    for peer, via in sorted(fetched.relayed.items()):
        ui.out.print(
            f"  relayed: chunks from {peer} came through relay {via} (no hole punch got "
            "through; the relay's limits bound such a fetch)",
            soft_wrap=True,
            markup=False,
        )
    logical = result["bytes_done"] + result["deduplicated_bytes"]
    if logical:
        diffs = (
            f"; {result['diff_chunks']:,} chunks came as diffs against an older version "
            f"({result['diff_logical_bytes']:,} bytes in {result['diff_received_bytes']:,})"
            if result["diff_chunks"]
            else ""
        )
        ui.out.print(
            f"  transfer: {logical:,} bytes needed, {result['deduplicated_bytes']:,} already here, "
            f"{result['received_bytes']:,} received (+{result['metadata_bytes']:,} of claims and manifests)"
            f"{diffs}"
            + (
                f"; {result['duplicate_bytes']:,} bytes came twice (asked of two peers at the end)"
                if result["duplicate_bytes"]
                else ""
            ),
            soft_wrap=True,
            markup=False,
        )


def _peers(args: argparse.Namespace) -> None:
    reply: api.Peers = request(args, api.PeersRequest())
    if args.json:
        ui.print_json([api.encode(p) for p in reply.peers])
        return
    ui.table(
        ("PEER", "STATE", "SENT", "RECEIVED", "BAD", "ADDRESS"),
        [
            (
                p.peer_id,
                "banned" if p.banned_for > 0 else "connected" if p.connected else "gone",
                f"{p.sent_bytes:,}",
                f"{p.received_bytes:,}",
                str(p.bad),
                (p.addrs or ("-",))[0],
            )
            for p in reply.peers
        ],
    )


def _status(args: argparse.Namespace) -> None:
    s: api.Status = request(args, api.StatusRequest())
    if args.json:
        ui.print_json(api.encode(s))
        return
    st = s.store
    p = s.policy_in_use
    policy = f"{p.file}: {p.threshold} of {len(p.trusted)} keys" if p else "none (cannot fetch)"
    lines = [
        f"node     {s.peer_id}",
        f"data     {s.data_dir}",
        *(f"address  {a}" for a in s.addrs),
        f"peers    {s.peers}",
        f"policy   {policy}",
        f"store    {st.paths} paths ({st.complete_paths} complete), {st.unique_chunks:,} chunks, "
        f"{st.unique_bytes or 0:,} bytes",
        f"served   {s.served_blocks:,} blocks, {s.served_bytes:,} bytes"
        + (f" ({s.packed_runs_served:,} runs as packed ahead)" if s.packed_runs_served else ""),
        "reach    "
        + {
            "public": f"public: peers dial it at {s.public_addr}",
            "private": "private: peers cannot dial it (behind a NAT or a firewall); it dials them",
        }.get(s.reachability, "unknown: no peer has tried to dial it back yet"),
        f"gateway  {s.gateway or 'off'}",
    ]
    r, mine = s.relay, s.relays
    if r.serving or r.circuits_total or r.refused:
        lines.append(
            f"relay    {'serving' if r.serving else 'not serving'}: {r.reservations} peers hold a "
            f"slot, {r.circuits} circuits open ({r.circuits_total} in all, {r.ended_by_limit} ended "
            f"by a limit), {r.bytes_relayed:,} bytes relayed, {r.refused} requests refused"
        )
    for c in s.caught:
        lines.append(f"caught   {c.key} told two stories ({c.proof}): its claims count for nothing")
    if s.revoked_claims:
        lines.append(
            f"revoked  {s.revoked_claims} claims taken back by their builders count for nothing"
        )
    for slot in mine.slots:
        lines.append(f"relayed  peers reach it at {slot}")
    if mine.punched or mine.punch_failed or mine.relayed_peers:
        lines.append(
            f"punch    {mine.punched} direct through a hole punch, {mine.punch_failed} failed; "
            f"{len(mine.relayed_peers)} peers connected only through a relay"
        )
    if s.packing:
        lines.append(f"packing  {s.packing:,} published paths still to compress ahead (xz)")
    if s.publishing or s.outbox:
        lines.append(f"publish  {s.publishing or 'post-build hook'}; {s.outbox:,} paths queued")
    if s.gateway_key:
        lines.append(f"nix key  {s.gateway_key}  (for trusted-public-keys)")
    ui.out.print("\n".join(lines), soft_wrap=True, markup=False)
