"""kill -9 at chosen checkpoints of a real `ferry publish` and `ferry gc`, then reopen:
the store must be consistent, nothing reported done may be lost, and a re-run finishes."""

from __future__ import annotations

import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest

from node.local.store import LocalStore
from store import dump, export
from store.path import StorePath
from tests import trees
from tests.cli import ferry

A = "/nix/store/" + "a" * 32 + "-pkg-1.0"
B = "/nix/store/" + "b" * 32 + "-pkg-1.1"
BATCH = 200_000  # small batches: many batch checkpoints


def nar_of(tree: Path) -> bytes:
    return b"".join(bytes(p) for p in dump.dump(str(tree)))


def exported(store: LocalStore, path: str) -> bytes:
    return b"".join(
        bytes(p) for p in export.write_nar(store.complete_manifest(StorePath.parse(path)), store)
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Store `base` holds A (complete); tree b is A's next version: shared and new chunks."""
    d = tmp_path_factory.mktemp("crash")
    shared = {b"lib": trees.Dir({b"libbig.so": trees.File(1_500_000, 1, True)})}
    trees.write(trees.Dir({**shared, b"doc": trees.File(300_000, 2, False)}), d / "a")
    b_files = {
        f"f{i:02d}".encode(): trees.File(20_000 + 9_000 * i, 100 + i, False) for i in range(24)
    }
    trees.write(trees.Dir({**shared, **b_files, b"big": trees.File(900_000, 3, False)}), d / "b")
    (d / "base").mkdir()
    r = ferry("publish", str(d / "a"), "--store-path", A, "--data-dir", str(d / "base"), env={})
    assert r.returncode == 0, r.stderr
    return d


def _checkpoints(start: Path, tmp: Path, *args: str) -> list[str]:
    """The checkpoints `ferry ARGS` passes on a copy of the store `start`, in order."""
    data = tmp / "probe"
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(start, data)
    log = tmp / "checkpoints"
    r = ferry(
        *args,
        "--data-dir",
        str(data),
        env={"FERRY_TEST_CHECKPOINTS": str(log), "FERRY_TEST_BATCH_BYTES": str(BATCH)},
    )
    assert r.returncode == 0, r.stderr
    return log.read_text().split()


def _pick(names: list[str], want: int) -> list[tuple[str, int]]:
    """At least `want` crash points: every checkpoint kind, and evenly spread positions."""
    seen: Counter[str] = Counter()
    points = []
    for name in names:
        seen[name] += 1
        points.append((name, seen[name]))
    step = max(1, len(points) // want)
    chosen = set(points[::step]) | {p for p in points if p[1] == 1} | {points[-1]}
    return sorted(chosen, key=points.index)


@pytest.mark.slow(seconds=30)
def test_ingest_killed_anywhere(world: Path, tmp_path: Path, nix) -> None:
    publish_b = ("publish", str(world / "b"), "--store-path", B)
    names = _checkpoints(world / "base", tmp_path, *publish_b)
    assert {"chunks-written", "batch-synced", "batch-committed", "path-committed"} <= set(names)
    points = _pick(names, 24)
    assert len(points) >= 20
    want_a, want_b = nix.dump(world / "a"), nix.dump(world / "b")
    for n, (name, k) in enumerate(points):
        data = tmp_path / f"run{n}"
        shutil.copytree(world / "base", data)
        r = ferry(
            *publish_b,
            "--data-dir",
            str(data),
            env={"FERRY_TEST_CRASH": f"{name}:{k}", "FERRY_TEST_BATCH_BYTES": str(BATCH)},
        )
        assert r.returncode == -signal.SIGKILL, (name, k, r.stderr)
        with LocalStore(str(data)) as store:
            report = store.verify()
            assert report.ok, (name, k, report)
            # Nothing past a slab's committed size survives reopening.
            assert all(store.slab(s.id).size() <= s.size for s in store.index.slabs())
            assert exported(store, A) == want_a  # complete before the kill: still complete
            b = store.index.path(B)
            assert (b is not None) == (name == "path-committed"), (name, k)
            if b is not None:
                assert exported(store, B) == want_b
        r = ferry(*publish_b, "--data-dir", str(data), env={})
        assert r.returncode == 0, (name, k, r.stderr)
        with LocalStore(str(data)) as store:
            assert exported(store, B) == want_b and store.verify().ok
            # Chunks the killed run committed were reused, not written twice.
            assert store.index.scalar("SELECT count(*) FROM chunks") == len(
                set(store.complete_manifest(StorePath.parse(A)).chunk_digests())
                | set(store.complete_manifest(StorePath.parse(B)).chunk_digests())
            )
        shutil.rmtree(data)


@pytest.mark.slow
def test_gc_killed_anywhere(world: Path, tmp_path: Path, nix) -> None:
    base = tmp_path / "with-b"
    shutil.copytree(world / "base", base)
    assert (
        ferry(
            "publish",
            str(world / "b"),
            "--store-path",
            B,
            "--no-root",
            "--data-dir",
            str(base),
            env={},
        ).returncode
        == 0
    )
    with LocalStore(str(base)) as store:
        only_b = len(
            set(store.complete_manifest(StorePath.parse(B)).chunk_digests())
            - set(store.complete_manifest(StorePath.parse(A)).chunk_digests())
        )
        disk_with_b = store.stats().slab_disk_bytes
    names = _checkpoints(base, tmp_path, "gc")
    assert names.count("hole-punched") == only_b and names.count("gc-committed") == 1
    points = _pick(names, 12)
    want_a = nix.dump(world / "a")
    for n, (name, k) in enumerate(points):
        data = tmp_path / f"gc{n}"
        shutil.copytree(base, data)
        r = ferry("gc", "--data-dir", str(data), env={"FERRY_TEST_CRASH": f"{name}:{k}"})
        assert r.returncode == -signal.SIGKILL, (name, k, r.stderr)
        with LocalStore(str(data)) as store:  # reopening finishes the punching
            assert store.verify().ok
            assert store.index.path(B) is None and exported(store, A) == want_a
            assert store.index.scalar("SELECT count(*) FROM freed") == 0
            assert store.stats().slab_disk_bytes <= disk_with_b - only_b * 4096
        r = ferry("gc", "--json", "--data-dir", str(data), env={})
        assert r.returncode == 0 and '"removed_paths": []' in r.stdout
        shutil.rmtree(data)
