"""Verdicts in words and in JSON, the same for `ferry trust decide`, `ferry fetch` and the logs."""

from __future__ import annotations

from typing import Any

from trust.policy import Insufficient, QuorumPolicy, Reason, Trusted, Verdict


def _outcomes_json(groups: Any) -> list[dict[str, Any]]:
    return [
        {
            "nar_hash": str(o.nar_hash),
            "manifest_digest": o.manifest_digest.hex(),
            "nar_size": o.nar_size,
            "signers": list(names),
        }
        for o, names in groups.items()
    ]


def verdict_json(v: Verdict) -> dict[str, Any]:
    if isinstance(v, Trusted):
        return {
            "verdict": "trusted",
            "nar_hash": str(v.nar_hash),
            "manifest_digest": v.manifest_digest.hex(),
            "nar_size": v.outcome.nar_size,
            "signers": list(v.signers),
            "nix_signatures": [c.nix_sig().encode() for c in v.claims],
            "dissent": _outcomes_json(v.dissent),
        }
    if isinstance(v, Insufficient):
        return {
            "verdict": "insufficient",
            "have": v.have,
            "need": v.need,
            "missing": list(v.missing),
        }
    return {"verdict": "conflict", "outcomes": _outcomes_json(v.outcomes)}


def _outside(v: Insufficient) -> list[str]:
    """Names of the keys whose claims counted for nothing because the policy lacks them."""
    names = {i.claim.builder.name for i in v.ignored if i.reason is Reason.UNTRUSTED_KEY}
    return sorted(names)


def verdict_text(policy: QuorumPolicy, v: Verdict) -> str:
    n = len(policy.trusted)
    if isinstance(v, Trusted):
        lines = [
            f"trusted: {len(v.signers)} of {n} builders agree (threshold {policy.threshold}): "
            f"{', '.join(v.signers)}",
            f"  NarHash   {v.nar_hash}  ({v.outcome.nar_size:,} bytes)",
            f"  manifest  {v.manifest_digest.hex()}",
        ]
        for o, names in v.dissent.items():
            lines.append(f"warning: {', '.join(names)} signed a different result: {o.short()}")
        return "\n".join(lines)
    if isinstance(v, Insufficient):
        text = (
            f"insufficient: {v.have} of the {v.need} agreeing signatures needed "
            f"(from {n} trusted builders); no valid claim from: {', '.join(v.missing) or 'none'}"
        )
        outside = _outside(v)
        if outside:
            text += f"; not counted, from keys outside the policy: {', '.join(outside)}"
        for reason, why in (
            (Reason.CAUGHT, "keys caught telling two stories (`ferry trust caught`)"),
            (Reason.REVOKED, "keys revoked before the claims' time"),
            (Reason.OUT_OF_WINDOW, "keys rotated out (or not yet in) at the claims' time"),
            (Reason.WITHDRAWN, "claims their builders revoked"),
            (Reason.UNLOGGED, "claims no peer showed in their builder's log (require_logs)"),
            (Reason.OTHER_LOG, "claims in another log than the one the policy pins"),
        ):
            held = sorted({i.claim.builder.name for i in v.ignored if i.reason is reason})
            if held:
                text += f"; not counted, from {why}: {', '.join(held)}"
        return text
    lines = ["conflict: trusted builders signed different results; the path is refused"]
    for o, names in v.outcomes.items():
        lines.append(f"  {o.short()}: {', '.join(names)}")
    return "\n".join(lines)
