"""Terminal output: progress bars on a terminal only, errors as one clear line."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from node.cli.failed import Failed

err = Console(stderr=True, highlight=False)
# Piped output is read by people through `less` or by scripts (which should use --json):
# wide enough that tables keep whole store paths and hashes.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 240)


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Yields `advance(n_bytes)`; draws a bar only when stderr is a terminal."""
    with progress_report() as report:
        done = 0
        report(description, 0, total)

        def advance(n: int) -> None:
            nonlocal done
            done += n
            report(description, done, total)

        yield advance


@contextmanager
def progress_report() -> Iterator[Callable[[str, int, int | None], None]]:
    """Yields `report(what, done, total)`: one bar per `what`, on a terminal only."""
    if not err.is_terminal:
        yield lambda what, done, total: None
        return
    with _bars(TimeRemainingColumn()) as bar:
        tasks: dict[str, TaskID] = {}

        def report(what: str, done: int, total: int | None) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done)

        yield report


def _bars(last: ProgressColumn) -> Progress:
    """Byte-counting bars on stderr that vanish when done, `last` at their end."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        last,
        console=err,
        transient=True,
    )


def table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> None:
    t = Table(*headers, box=None, pad_edge=False, header_style="bold")
    for r in rows:
        t.add_row(*r)
    if out.is_terminal:
        out.print(t)
        return
    with out.capture() as captured:
        out.print(t)
    # Columns are padded to their width; trailing blanks only get in the way of grep/diff.
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def print_json(data: object) -> None:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")


@contextmanager
def transfer_bar(label: str, waiting: str) -> Iterator[Callable[[int | None, int, str], None]]:
    """Yields `update(total_bytes, bytes_done, detail)` for a transfer whose size is known
    only once it starts (`waiting` shows until then); a bar only on a terminal."""
    if not err.is_terminal:
        yield lambda total, done, detail: None
        return
    with _bars(TextColumn("{task.fields[detail]}")) as bar:
        task = bar.add_task(label, total=None, detail=waiting)

        def update(total: int | None, done: int, detail: str) -> None:
            bar.update(task, total=total, completed=done, detail=detail)

        yield update


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def fail(message: str, code: int = 1) -> NoReturn:
    raise Failed(message, code)


def report_failure(failure: Failed, as_json: bool) -> None:
    """The error line on stderr; under --json also `{"error": ..., "exit": ...}` on
    stdout, where a script reads the command's answer."""
    if as_json:
        print_json({"error": failure.message, "exit": failure.code})
    err.print(f"[bold red]ferry: error:[/] {failure.message}", markup=True, soft_wrap=True)
