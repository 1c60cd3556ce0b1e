"""`ferry trust`: builder keys, signed build claims, and quorum decisions.

Exit codes are a contract other tools use:
  0  success (decide: trusted)
  1  verify: a signature does not verify;  decide: insufficient signatures
  2  decide: trusted builders disagree (conflict)
  3  bad input: a usage error, or a file that is missing, unreadable or malformed
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time
from typing import Any, NoReturn

from node.cli import Commands, options, ui
from store import build, dump, userfile
from store.manifest import Manifest
from store.path import StorePath, StorePathError
from store.source import tree_size
from store.userfile import UserFileError
from trust import claim, keyfile, policyfile
from trust.claim import ClaimError, SignedClaim
from trust.key import KeyFormatError, PublicKey, SecretKey
from trust.keyfile import KeyFileError
from trust.policy import (
    Conflict,
    Ignored,
    Insufficient,
    KeyLife,
    PolicyError,
    QuorumPolicy,
    Trusted,
    Verdict,
)
from trust.report import verdict_json, verdict_text

OK, INSUFFICIENT, CONFLICT, BAD_INPUT = 0, 1, 2, 3
INVALID = 1  # verify: some signature does not verify

_EXIT_CODES = """exit status:
  0  success (decide: trusted)
  1  verify: a signature does not verify; decide: not enough signatures; audit: no peer
     serves the log; audit, revoke-claim: the node is not running or failed
  2  decide: trusted builders signed different results (conflict); audit: the log does
     not hold together
  3  bad input: usage error, or a missing, unreadable or malformed file; revoke-claim:
     the node holds no such claim by that key
"""


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "trust",
        usage_status=BAD_INPUT,
        description="Make and check the signatures that decide which store paths a node "
        "accepts: a path is trusted when k of the configured builder keys signed the same "
        "build result (NarHash and manifest digest).",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(usage_status=BAD_INPUT)
    cmds = p.add_subparsers(dest="trust_command", metavar="COMMAND", required=True)

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        c = cmds.add_parser(
            name,
            usage_status=BAD_INPUT,
            help=help,
            description=description,
            epilog=_EXIT_CODES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        c.add_argument("--json", action="store_true", help="print the result as JSON")
        return c

    c = command(
        "keygen",
        "make a builder key pair in Nix's format",
        "Write NAME's secret key to PREFIX.secret (mode 0600) and its public key to "
        "PREFIX.public. Both are in Nix's format: the secret works with `nix store sign "
        "--key-file`, the public one in Nix's trusted-public-keys and in ferry policies. "
        "Existing files are never overwritten.",
    )
    c.add_argument("name", metavar="NAME", help="the key's name, e.g. builder-1.example.org-1")
    c.add_argument(
        "-o", "--output", metavar="PREFIX", help="where to write the files (default: NAME)"
    )
    c.set_defaults(run=_keygen)

    c = command(
        "pubkey",
        "print the public key of a secret key file",
        "Print the public key (name:base64) belonging to a secret key file.",
    )
    c.add_argument("secret", metavar="SECRET", help="a secret key file (ferry's or Nix's)")
    c.set_defaults(run=_pubkey)

    c = command(
        "claim",
        "sign a build result as a builder",
        "Build the manifest of the tree at PATH as STORE_PATH and write a claim, signed "
        "with the builder's key, that this is the build result: NarHash, NarSize, "
        "references and manifest digest. The claim also carries the key's Nix signature "
        "over the path's narinfo fingerprint.",
    )
    c.add_argument("path", metavar="PATH", help="the built output (a directory or file)")
    c.add_argument("--key", metavar="SECRET", required=True, help="the builder's secret key file")
    c.add_argument(
        "--store-path",
        metavar="STORE_PATH",
        type=options.store_path_arg,
        required=True,
        help="the store path PATH was built as, e.g. /nix/store/<hash>-hello-2.12",
    )
    c.add_argument(
        "--references",
        metavar="P",
        nargs="*",
        default=[],
        help="full store paths the output refers to",
    )
    c.add_argument("-o", "--output", metavar="FILE", required=True, help="where to write the claim")
    c.set_defaults(run=_claim)

    c = command(
        "verify",
        "check claims' signatures",
        "Check that each claim is well formed and that both its signatures (the claim's "
        "and the Nix fingerprint's) verify under the key it names. This does not say the "
        "key is trusted: that is `decide`'s job.",
    )
    c.add_argument("claims", metavar="CLAIM", nargs="+", help="claim files")
    c.set_defaults(run=_verify)

    c = command(
        "decide",
        "apply a quorum policy to a store path's claims",
        "Print each claim (builder, NarHash, manifest digest, signatures, whether it "
        "counted) and the verdict for STORE_PATH under the policy: trusted, insufficient "
        "or conflict.",
    )
    c.add_argument(
        "store_path",
        metavar="STORE_PATH",
        type=options.store_path_arg,
        help="the store path to decide on",
    )
    c.add_argument("--policy", metavar="FILE", required=True, help="the quorum policy (TOML)")
    # "+", not "*": argparse cannot split a "*" list that follows an option.
    c.add_argument("claims", metavar="CLAIM", nargs="+", help="claim files")
    c.set_defaults(run=_decide)

    c = command(
        "rotate",
        "hand a builder's place in a policy from its old key to a new one",
        "From --at on (default: now) claims are counted from NEW and no longer from OLD; "
        "claims OLD signed before then still count. The two keys are one builder: a path "
        "both signed counts once. Writes not_after and successor for OLD, not_before for NEW "
        "(and adds NEW to trusted) in the policy file, which is rewritten (its comments are "
        "not kept). A running node reads it on `ferry node reload`.",
    )
    c.add_argument("--policy", metavar="FILE", required=True, help="the policy file to change")
    c.add_argument("old", metavar="OLD", help="the name of the key being retired")
    c.add_argument("new", metavar="NEW", help="the new public key: name:base64, or a .public file")
    c.add_argument("--at", metavar="TIME", help="when: 2026-12-01T00:00:00Z, or seconds since 1970")
    c.set_defaults(run=_rotate)

    c = command(
        "revoke",
        "make a key count for nothing from a time on",
        "Claims NAME signed dated from --at on (default: now) never count. A claim carries "
        "the time its signer gave it: a leaked key can sign claims dated earlier, so for a key "
        "known to be stolen give the time it may first have been, or remove it from trusted. "
        "Rewrites the policy file (its comments are not kept); `ferry node reload` applies it.",
    )
    c.add_argument("--policy", metavar="FILE", required=True, help="the policy file to change")
    c.add_argument("name", metavar="NAME", help="the key's name")
    c.add_argument("--at", metavar="TIME", help="when: 2026-12-01T00:00:00Z, or seconds since 1970")
    c.set_defaults(run=_revoke)

    c = command(
        "revoke-claim",
        "take back a claim a builder key signed by mistake",
        "Ask the running node to revoke the claims KEY signed for STORE_PATH: a revocation, "
        "signed by KEY, goes into KEY's log (so an audit sees it) and out to every peer, and "
        "from then on no node that holds it counts those claims. Run it on the node that "
        "publishes with KEY. A node that signs another result for a path its log already "
        "holds revokes the earlier claim by itself.",
    )
    c.add_argument(
        "store_path",
        metavar="STORE_PATH",
        type=options.store_path_arg,
        help="the store path whose claim to revoke",
    )
    c.add_argument("--key", metavar="FILE", required=True, help="the builder's secret key file")
    options.add_data_dir(c)
    c.set_defaults(run=_revoke_claim)

    c = command(
        "audit",
        "read a builder's whole claim log from the network and check it",
        "Ask the running node's peers for BUILDER-KEY's log (its builder serves it on "
        "/ferry/log/1), read every leaf, and check that they hash to the root the builder "
        "signed, that each is a claim by that key, that no path has two results, and that "
        "every head of that key the node has seen is a prefix of it. Prints the log's "
        "size and head and each inconsistency.",
    )
    c.add_argument("key", metavar="BUILDER-KEY", help="the builder's public key, name:base64")
    options.add_data_dir(c)
    c.set_defaults(run=_audit)

    c = command(
        "caught",
        "list the builder keys this node caught telling two stories",
        "Each key the node holds a proof of equivocation against (two signed heads of its "
        "log that fork, two leaves at one index, or two results for one store path), "
        "checked again here. Such a key counts for nothing in the node's policy, whatever "
        "the policy file says. The proofs are the files in <data-dir>/caught/; any node "
        "that is given one checks it and refuses the key too.",
    )
    options.add_data_dir(c)
    c.set_defaults(run=_caught)


def _bad(message: str) -> NoReturn:
    ui.fail(message, BAD_INPUT)


def _emit(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if args.json:
        ui.print_json(data)
    else:
        ui.out.print(text, soft_wrap=True, markup=False)


def _keygen(args: argparse.Namespace) -> None:
    prefix = args.output or args.name
    try:
        key = SecretKey.generate(args.name)
        secret, public = f"{prefix}.secret", f"{prefix}.public"
        keyfile.write_secret(secret, key)
        try:
            keyfile.write_public(public, key.public)
        except KeyFileError:
            os.unlink(secret)  # all or nothing: no secret without its public half
            raise
    except (KeyFormatError, KeyFileError) as e:
        _bad(str(e))
    _emit(
        args,
        {
            "name": key.name,
            "public_key": key.public.encode(),
            "secret_file": secret,
            "public_file": public,
        },
        f"{key.public}\nwrote {secret} (keep it private) and {public}",
    )


def _pubkey(args: argparse.Namespace) -> None:
    try:
        key = keyfile.load_secret(args.secret)
    except KeyFileError as e:
        _bad(str(e))
    _emit(args, {"name": key.name, "public_key": key.public.encode()}, key.public.encode())


def _claim(args: argparse.Namespace) -> None:
    try:
        key = keyfile.load_secret(args.key)
        store_path = StorePath.parse(args.store_path)
        refs = [StorePath.decode(r, store_path.store_dir) for r in args.references]
    except (KeyFileError, StorePathError) as e:
        _bad(str(e))
    if not os.path.lexists(args.path):
        _bad(f"{args.path}: no such file or directory")
    try:
        with ui.progress(store_path.name, tree_size(args.path)) as advance:
            manifest = build.from_directory(
                args.path, store_path, references=refs, on_progress=advance
            )
        signed = claim.sign_manifest(manifest, key)
        userfile.write_atomically(args.output, signed.encode())
    except (dump.DumpError, UserFileError) as e:
        _bad(str(e))
    except PermissionError as e:
        _bad(f"{e.filename}: permission denied")
    _emit(
        args,
        {**_describe(signed), "output": args.output, "manifest_size": len(manifest.encode())},
        _claim_text(signed, manifest, args.output),
    )


def _claim_text(signed: SignedClaim, manifest: Manifest, output: str) -> str:
    c = signed.claim
    return (
        f"wrote {output}: {c.builder.name} claims {c.store_path}\n"
        f"  NarHash   {c.nar_hash}  ({c.nar_size:,} bytes)\n"
        f"  manifest  {c.manifest_digest.hex()}  ({manifest.stats().chunks:,} chunks)\n"
        f"  Nix sig   {signed.nix_sig()}"
    )


def _load_claims(paths: list[str]) -> list[SignedClaim]:
    loaded = []
    for path in paths:
        try:
            loaded.append(SignedClaim.decode(userfile.read(path, claim.MAX_CLAIM, "a claim")))
        except UserFileError as e:
            _bad(str(e))
        except ClaimError as e:
            _bad(f"{path}: {e}")
    return loaded


def _describe(s: SignedClaim) -> dict[str, Any]:
    c = s.claim
    return {
        "builder": c.builder.name,
        "public_key": c.builder.encode(),
        "store_path": str(c.store_path),
        "nar_hash": str(c.nar_hash),
        "nar_size": c.nar_size,
        "references": [str(r) for r in c.references],
        "manifest_digest": c.manifest_digest.hex(),
        "time": c.time,
        "nix_signature": s.nix_sig().encode(),
    }


def _ok(flag: bool) -> str:
    return "ok" if flag else "BAD"


def _verify(args: argparse.Namespace) -> None:
    loaded = _load_claims(args.claims)
    rows, report = [], []
    for path, s in zip(args.claims, loaded):
        claim_ok, nix_ok = s.claim_valid(), s.nix_valid()
        report.append(
            {
                "file": path,
                **_describe(s),
                "claim_signature_ok": claim_ok,
                "nix_signature_ok": nix_ok,
            }
        )
        rows.append((path, s.builder.name, str(s.claim.store_path), _ok(claim_ok), _ok(nix_ok)))
    all_ok = all(r["claim_signature_ok"] and r["nix_signature_ok"] for r in report)
    if args.json:
        _emit(args, {"valid": all_ok, "claims": report}, "")
    else:
        ui.table(("claim", "builder", "store path", "claim sig", "Nix sig"), rows)
    sys.exit(OK if all_ok else INVALID)


def _decide(args: argparse.Namespace) -> None:
    try:
        store_path = StorePath.parse(args.store_path)
    except StorePathError as e:
        _bad(str(e))
    try:
        policy = policyfile.load(args.policy)
    except PolicyError as e:
        _bad(str(e))
    loaded = _load_claims(args.claims)
    verdict = policy.decide(store_path, loaded)
    ignored = {i.index: i for i in verdict.ignored}
    report, rows = [], []
    for n, (path, s) in enumerate(zip(args.claims, loaded)):
        status, reason = _status(verdict, n, s, ignored.get(n))
        claim_ok, nix_ok = s.claim_valid(), s.nix_valid()
        report.append(
            {
                "file": path,
                **_describe(s),
                "claim_signature_ok": claim_ok,
                "nix_signature_ok": nix_ok,
                "status": status,
                "reason": reason,
            }
        )
        rows.append(
            (
                s.builder.name,
                _short_hash(s),
                s.claim.manifest_digest.hex()[:16],
                _ok(claim_ok),
                _ok(nix_ok),
                status + (f": {reason}" if reason else ""),
            )
        )
    data = {
        "store_path": str(store_path),
        "threshold": policy.threshold,
        "on_conflict": policy.on_conflict.value,
        **verdict_json(verdict),
        "claims": report,
    }
    if args.json:
        _emit(args, data, "")
    else:
        if rows:
            ui.table(("builder", "NarHash", "manifest", "claim sig", "Nix sig", "counted"), rows)
        ui.out.print(verdict_text(policy, verdict), soft_wrap=True, markup=False)
    sys.exit({Trusted: OK, Insufficient: INSUFFICIENT, Conflict: CONFLICT}[type(verdict)])


def _status(
    verdict: Verdict, n: int, s: SignedClaim, ignored: Ignored | None
) -> tuple[str, str | None]:
    if ignored is not None:
        return "ignored", ignored.reason.value
    if isinstance(verdict, Trusted) and s.claim.outcome != verdict.outcome:
        return "dissent", "signed a different result"
    if isinstance(verdict, Conflict):
        return "conflict", None
    return "counted", None


def _short_hash(s: SignedClaim) -> str:
    return str(s.claim.nar_hash)[: 7 + 12] + "…"


def _caught(args: argparse.Namespace) -> None:
    from node.cli.netcmd import data_dir
    from trust import equivocation

    where = os.path.join(data_dir(args), "caught")
    rows = []
    try:
        names = sorted(os.listdir(where))
    except FileNotFoundError:
        names = []
    except OSError as e:
        _bad(f"cannot read {where}: {e.strerror}")
    for name in names:
        path = os.path.join(where, name)
        try:
            with open(path, "rb") as f:
                proof = equivocation.decode(f.read())
        except (OSError, equivocation.EquivocationError) as e:
            rows.append({"file": path, "key": None, "proof": None, "problem": str(e)})
            continue
        rows.append(
            {"file": path, "key": str(proof.check()), "proof": type(proof).__name__.upper()}
        )
    text = "\n".join(
        f"{r['key']}  {r['proof']}  ({r['file']})"
        if r["key"]
        else f"{r['file']}: not a proof that holds ({r['problem']})"
        for r in rows
    )
    _emit(args, {"caught": rows}, text or "no builder key caught")


def _at(text: str | None) -> int:
    if text is None:
        return int(time.time())
    if text.isdigit():
        return int(text)
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        _bad(f"--at {text!r}: give a time like 2026-12-01T00:00:00Z, or seconds since 1970")
    if when.tzinfo is None:
        _bad(f"--at {text!r}: give the time zone (e.g. a trailing Z for UTC)")
    return int(when.timestamp())


def _load_policy(path: str) -> QuorumPolicy:
    try:
        return policyfile.load(path)
    except PolicyError as e:
        _bad(str(e))


def _save_policy(args: argparse.Namespace, policy: QuorumPolicy, done: str) -> None:
    try:
        userfile.write_atomically(args.policy, policyfile.dump(policy).encode(), "a policy file")
    except UserFileError as e:
        _bad(str(e))
    _emit(
        args,
        {"policy": args.policy, "done": done},
        f"{done}\nwrote {args.policy}; a running node applies it on `ferry node reload`",
    )


def _with_life(policy: QuorumPolicy, name: str, **change: Any) -> tuple[tuple[str, KeyLife], ...]:
    lives = dict(policy.lives)
    lives[name] = dataclasses.replace(lives.get(name, KeyLife()), **change)
    return tuple(lives.items())


def _rotate(args: argparse.Namespace) -> None:
    policy = _load_policy(args.policy)
    at = _at(args.at)
    try:
        new = (
            keyfile.load_public(args.new)
            if os.path.isfile(args.new)
            else PublicKey.decode(args.new)
        )
    except (KeyFormatError, KeyFileError) as e:
        _bad(f"NEW: {e}")
    if args.old not in {k.name for k in policy.trusted}:
        _bad(f"the policy trusts no key named {args.old!r}")
    lives = dict(_with_life(policy, args.old, not_after=at, successor=new.name))
    lives[new.name] = dataclasses.replace(lives.get(new.name, KeyLife()), not_before=at)
    try:
        rotated = dataclasses.replace(
            policy,
            trusted=policy.trusted + ((new,) if new not in policy.trusted else ()),
            lives=tuple(lives.items()),
        )
    except PolicyError as e:
        _bad(str(e))
    _save_policy(
        args, rotated, f"{args.old} hands over to {new.name} at {policyfile.show_time(at)}"
    )


def _revoke(args: argparse.Namespace) -> None:
    policy = _load_policy(args.policy)
    if args.name not in {k.name for k in policy.trusted}:
        _bad(f"the policy trusts no key named {args.name!r}")
    at = _at(args.at)
    revoked = dataclasses.replace(policy, lives=_with_life(policy, args.name, revoked=at))
    _save_policy(args, revoked, f"{args.name} counts for nothing from {policyfile.show_time(at)}")


def _revoke_claim(args: argparse.Namespace) -> None:
    import trio

    from node.cli.netcmd import data_dir
    from node.daemon import api, control

    try:
        StorePath.parse(args.store_path)
    except StorePathError as e:
        _bad(f"STORE_PATH: {e}")
    key = os.path.abspath(args.key)
    if not os.path.isfile(key):
        _bad(f"--key {args.key}: no such file")
    req = api.RevokeClaimRequest(key, str(args.store_path))
    try:
        done: api.ClaimsRevoked = trio.run(control.call, data_dir(args), req, None)
    except control.ControlError as e:
        # This command's statuses are `ferry trust`'s: 3 for what the user named wrong.
        ui.fail(str(e), BAD_INPUT if e.failure is api.Failure.USAGE else 1)
    text = "\n".join(
        f"revoked  {r.store_path}: the claim of {policyfile.show_time(r.signed_at)} "
        f"({r.nar_hash}), at leaf {r.index:,} of {done.key.split(':')[0]}'s log "
        f"(now {r.log_size:,} leaves); peers are told"
        for r in done.revoked
    )
    _emit(args, api.encode(done), text)


def _audit(args: argparse.Namespace) -> None:
    from node.cli.netcmd import request
    from node.daemon import api

    audit: api.Audit = request(args, api.AuditRequest(args.key))
    if not audit.found:
        text = f"no connected peer serves {audit.key}'s log (is its builder running and connected?)"
    else:
        text = "\n".join(
            [
                f"log of  {audit.key}",
                f"from    {audit.source}",
                f'log id  {audit.log} (to pin the key to it: log = "{audit.log}" in its [keys] table)',
                f"size    {audit.size:,} entries (claims, revocations) for {audit.paths:,} store paths",
                f"head    root {audit.root}, signed at {policyfile.show_time(audit.time)}",
                f"checked every leaf, and {audit.heads_checked} heads seen here",
                *(f"problem {p}" for p in audit.problems),
                "ok: the log holds together" if not audit.problems else "",
            ]
        ).rstrip()
    _emit(args, api.encode(audit), text)
    if not audit.found:
        sys.exit(1)
    if audit.problems:
        sys.exit(2)
