"""The quorum policy file, TOML:

    # Builders whose signatures count (Nix public key format, `name:base64`).
    trusted = [
      "builder-a.example.org-1:Yk7...=",
      "builder-b.example.org-1:3Vb...=",
      "builder-c.example.org-1:p0Q...=",
    ]
    threshold = 2            # how many of them must sign the same result
    on_conflict = "refuse"   # or "majority": k agreeing keys win despite a dissenter
    require_logs = false     # true: a claim counts only shown in its builder's log

    # A key's life, by the time each claim carries (`ferry trust rotate`, `revoke`):
    [keys."builder-a.example.org-1"]
    not_after = 2026-12-01T00:00:00Z        # rotated out: claims dated later do not count
    successor = "builder-a.example.org-2"   # one builder: the two count once between them
    [keys."builder-a.example.org-2"]
    not_before = 2026-12-01T00:00:00Z
    [keys."builder-c.example.org-1"]
    revoked = 2026-12-05T12:00:00Z          # claims dated from then on never count
    log = "3f0c9a6e51d2b4..."               # its claims count only in this log (its id)

Errors name the file, the line and the field, so a typo in a key is found at once.
"""

from __future__ import annotations

import datetime
import re
import tomllib

from store import userfile
from store.userfile import UserFileError
from trust.key import KeyFormatError, PublicKey
from trust.policy import KeyLife, OnConflict, PolicyError, QuorumPolicy

# name -> meaning, for the configuration reference (docs/configuration.md).
FIELDS: dict[str, str] = {
    "trusted": "builder public keys whose signatures count, in Nix's `name:base64` form (required)",
    "threshold": "how many trusted keys must sign the same build result before a path is accepted (required; "
    "1 to the number of trusted keys)",
    "on_conflict": 'what to do when trusted keys disagree about a path: "refuse" it (default), or '
    '"majority": accept the result at least `threshold` keys signed despite a dissenter',
    "require_logs": "count a claim only when it was shown to be in its builder's log (a logged "
    "claim, which a node asks of its peers when it lacks one); default false: claims of "
    "builders without logs count too",
    "keys": "a table per trusted key name, its life by the time its claims carry: not_before, "
    "not_after and revoked (TOML date-times, UTC), successor (the key name that took over: the "
    "two count as one builder); `ferry trust rotate` and `ferry trust revoke` write them; and "
    "log, the id (32 hex digits, `ferry trust audit` shows it) of the one log whose claims count",
}
LIFE_FIELDS = ("not_before", "not_after", "revoked", "successor", "log")
_FIELDS = tuple(FIELDS)
_MAX_FILE = 1 << 20


def load(path: str) -> QuorumPolicy:
    try:
        data = userfile.read(path, _MAX_FILE, "a policy file")
    except UserFileError as e:
        raise PolicyError(str(e)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse(text, path)


def parse(text: str, source: str = "policy") -> QuorumPolicy:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{source}: not valid TOML: {e}") from None
    where = _Locator(text, source)
    for key in doc:
        if key not in _FIELDS:
            raise PolicyError(
                f"{where.field(key)}: unknown field {key!r} (expected one of: {', '.join(_FIELDS)})"
            )
    for key in ("trusted", "threshold"):
        if key not in doc:
            raise PolicyError(f"{source}: missing field {key!r}")

    trusted = doc["trusted"]
    if not isinstance(trusted, list):
        raise PolicyError(
            f"{where.field('trusted')}: 'trusted' must be a list of public keys (\"name:base64\")"
        )
    keys = []
    for i, item in enumerate(trusted):
        if not isinstance(item, str):
            raise PolicyError(
                f'{where.field("trusted")}: trusted[{i}] must be a string "name:base64"'
            )
        try:
            keys.append(PublicKey.decode(item))
            # Checked here too (QuorumPolicy does it again) to point at the repeated line.
            QuorumPolicy(tuple(keys), 1)
        except (KeyFormatError, PolicyError) as e:
            at = where.value("trusted", item, trusted[:i].count(item))
            raise PolicyError(f"{at}: trusted[{i}]: {e}", "trusted") from None

    threshold = doc["threshold"]
    if isinstance(threshold, bool) or not isinstance(threshold, int):
        raise PolicyError(
            f"{where.field('threshold')}: threshold must be a whole number, not {threshold!r}"
        )

    mode = doc.get("on_conflict", OnConflict.REFUSE.value)
    try:
        on_conflict = OnConflict(mode)
    except ValueError:
        choices = " or ".join(repr(m.value) for m in OnConflict)
        raise PolicyError(
            f"{where.field('on_conflict')}: on_conflict must be {choices}, not {mode!r}"
        ) from None

    require_logs = doc.get("require_logs", False)
    if not isinstance(require_logs, bool):
        raise PolicyError(
            f"{where.field('require_logs')}: require_logs must be true or false, not {require_logs!r}"
        )
    lives = _lives(doc.get("keys", {}), where)
    try:
        return QuorumPolicy(
            tuple(keys), threshold, on_conflict, lives=lives, require_logs=require_logs
        )
    except PolicyError as e:
        raise PolicyError(f"{where.field(e.setting or 'trusted')}: {e}", e.setting) from None


def _lives(table: object, where: _Locator) -> tuple[tuple[str, KeyLife], ...]:
    if not isinstance(table, dict):
        raise PolicyError(f'{where.field("keys")}: keys must be a table of [keys."NAME"] tables')
    out = []
    for name, fields in table.items():
        if not isinstance(fields, dict):
            raise PolicyError(f"{where.field('keys')}: keys.{name} must be a table")
        unknown = [f for f in fields if f not in LIFE_FIELDS]
        if unknown:
            raise PolicyError(
                f"{where.field('keys')}: keys.{name}: unknown field {unknown[0]!r} "
                f"(expected: {', '.join(LIFE_FIELDS)})"
            )
        times = {}
        for f in ("not_before", "not_after", "revoked"):
            if f in fields:
                times[f] = _seconds(fields[f], f"keys.{name}.{f}", where)
        successor = fields.get("successor")
        if successor is not None and not isinstance(successor, str):
            raise PolicyError(f"{where.field('keys')}: keys.{name}.successor must be a key name")
        log = fields.get("log")
        if log is not None:
            if not (isinstance(log, str) and re.fullmatch(r"[0-9a-f]{32}", log)):
                raise PolicyError(
                    f"{where.field('keys')}: keys.{name}.log must be a log id, 32 hex digits "
                    "(`ferry trust audit` shows it)"
                )
            log = bytes.fromhex(log)
        out.append((name, KeyLife(successor=successor, log=log, **times)))
    return tuple(out)


def _seconds(value: object, what: str, where: _Locator) -> int:
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise PolicyError(f"{where.field('keys')}: {what}: give the time zone (e.g. ...Z)")
        return int(value.timestamp())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise PolicyError(
        f"{where.field('keys')}: {what} must be a date-time like 2026-12-01T00:00:00Z"
    )


def show_time(seconds: int) -> str:
    """A time as the policy file writes it (UTC, to the second)."""
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def dump(policy: QuorumPolicy) -> str:
    keys = "".join(f'  "{k}",\n' for k in policy.trusted)
    text = (
        f"trusted = [\n{keys}]\n"
        f"threshold = {policy.threshold}\n"
        f'on_conflict = "{policy.on_conflict.value}"\n'
    )
    if policy.require_logs:
        text += "require_logs = true\n"
    for name, life in policy.lives:
        text += f'\n[keys."{name}"]\n'
        for f in ("not_before", "not_after", "revoked"):
            value = getattr(life, f)
            if value is not None:
                text += f"{f} = {show_time(value)}\n"
        if life.successor is not None:
            text += f'successor = "{life.successor}"\n'
        if life.log is not None:
            text += f'log = "{life.log.hex()}"\n'
    return text


class _Locator:
    """Finds the line a top-level field or a string value is on (tomllib gives only
    the parsed values), so errors can point at it."""

    def __init__(self, text: str, source: str) -> None:
        self.lines = text.splitlines()
        self.source = source

    def _line_of(self, key: str) -> int | None:
        pat = re.compile(r"\s*(%s|\"%s\"|'%s')\s*=" % ((re.escape(key),) * 3))
        return next((n for n, line in enumerate(self.lines) if pat.match(line)), None)

    def field(self, key: str) -> str:
        n = self._line_of(key)
        return self.source if n is None else f"{self.source} line {n + 1}"

    def value(self, key: str, item: str, earlier: int = 0) -> str:
        """The line of `item` in `key`'s value, skipping `earlier` identical items."""
        start = self._line_of(key) or 0
        hits = [n for n in range(start, len(self.lines)) if item in self.lines[n]]
        return f"{self.source} line {hits[earlier] + 1}" if len(hits) > earlier else self.field(key)
