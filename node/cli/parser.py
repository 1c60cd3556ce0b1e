"""argparse with a chosen exit status for usage errors: `ferry trust` promises scripts
3 for bad input, while the rest of ferry uses argparse's 2."""

from __future__ import annotations

import argparse
from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, usage_status: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.usage_status = usage_status

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            # Leftovers are reported by the top parser; a subcommand that promised its
            # own usage status (set_defaults(usage_status=...)) still gets it.
            self.usage_status = getattr(ns, "usage_status", self.usage_status)
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        return ns

    def error(self, message: str) -> NoReturn:
        self.print_usage()
        self.exit(self.usage_status, f"{self.prog}: error: {message}\n")
