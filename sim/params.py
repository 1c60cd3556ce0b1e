"""The simulator's scenarios and their parameters: what `ferry sim list` shows and
`ferry sim run` parses, without importing the simulator itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class Params:
    nodes: int = 20  # fetchers (the fleet, in fleet-update)
    seed: int = 1
    closure_mb: float = 500.0
    paths: int = 10
    scale: int = (
        1024  # each real byte of chunk data stands for this many on the links (4 MiB chunks)
    )
    degree: int = 8  # random connections per node besides its bootstrap peers
    stagger: float = 10.0  # fetchers start within this many seconds
    churn: float = 0.5  # churn: chance per minute that an online node drops off
    downtime: float = 60.0  # churn: longest time a node stays away
    bad_fraction: float = 0.2  # byzantine-peers: misbehaving peers per honest fetcher
    sybils: int = 50  # byzantine-builders: keys outside the trusted set signing the lie
    on_conflict: str = (
        "majority"  # byzantine-builders: the fetchers' policy on disagreeing builders
    )
    liar: str = "equivocates"  # byzantine-builders: "equivocates" or "consistent"
    deadline: float = 6 * 3600.0  # virtual seconds before the run is called off

    HELP: ClassVar[dict[str, str]] = {
        "nodes": "fetching nodes (the fleet in fleet-update)",
        "seed": "random seed; the same seed gives the same result",
        "closure_mb": "closure size in MB as the links carry it",
        "paths": "store paths in the closure",
        "scale": "link bytes per real byte of chunk data (hashing and compression run on the real bytes)",
        "degree": "random connections each node keeps besides its bootstrap peers",
        "stagger": "fetchers start at uniform times within this many seconds",
        "churn": "chance per minute that an online node drops off (churn)",
        "downtime": "a node that dropped off comes back within this many seconds (churn)",
        "bad_fraction": "misbehaving peers per honest fetcher, split among corrupt, truncating and stalling "
        "(byzantine-peers)",
        "sybils": "keys outside the trusted set signing the lying builder's result (byzantine-builders)",
        "on_conflict": "the fetchers' policy when trusted builders disagree: majority or refuse "
        "(byzantine-builders)",
        "liar": "how the lying builder lies: equivocates (it also hands half the fetchers one branch of "
        "its log and half another, and is caught) or consistent (one story to all) (byzantine-builders)",
        "deadline": "virtual seconds before the run is called off",
    }


# name -> (what it shows, the parameters it uses)
SCENARIOS: dict[str, tuple[str, tuple[str, ...]]] = {
    "flash-crowd": (
        "1 seed and N fetchers of one closure, next to a central server with the seed's uplink",
        ("nodes", "closure_mb", "paths", "degree", "stagger"),
    ),
    "fleet-update": (
        "N nodes hold the old generation, 3 builders publish the new one after a mass rebuild",
        ("nodes", "closure_mb", "paths", "degree", "stagger"),
    ),
    "churn": (
        "a flash crowd whose fetchers drop off and come back during the transfer",
        ("nodes", "closure_mb", "paths", "degree", "churn", "downtime"),
    ),
    "byzantine-peers": (
        "a flash crowd with peers that serve corrupt or truncated chunks, or stall",
        ("nodes", "closure_mb", "paths", "degree", "bad_fraction"),
    ),
    "byzantine-builders": (
        "1 of 3 builders lies; Sybil keys outside the trusted set sign the lie",
        ("nodes", "closure_mb", "paths", "degree", "sybils", "on_conflict", "liar"),
    ),
}
