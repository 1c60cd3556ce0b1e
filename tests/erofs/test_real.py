"""Real trees through the whole path: `ferry publish`, `ferry image`, then fsck.erofs and
dump.erofs (anyone) and the kernel's own EROFS with mount(2) (root)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from erofs import layout
from erofs.reader import Image
from tests import trees
from tests.cli import ferry
from tests.conftest import require
from tests.erofs.images import fsck_extract, image_of, model, mount, on_disk, umount
from tests.erofs.test_writer import EDGE_CASES

STDLIB = Path(sysconfig.get_path("stdlib"))


def _biggest_program() -> Path:
    return max(
        (p for p in Path("/usr/bin").iterdir() if p.is_file() and not p.is_symlink()),
        key=lambda p: p.stat().st_size,
    )


def _tools() -> None:
    require(
        shutil.which("fsck.erofs") is not None and shutil.which("dump.erofs") is not None,
        "erofs-utils is not installed (Debian: erofs-utils)",
    )


def _kernel(tmp: Path) -> None:
    require(os.geteuid() == 0, "mounting needs root")
    image, slab, _ = image_of(trees.Dir({b"a": trees.File(10, 1, False)}))
    (tmp / "probe.erofs").write_bytes(image)
    (tmp / "probe.slab").write_bytes(slab.data)
    (tmp / "probe").mkdir()
    try:
        mount(tmp / "probe.erofs", tmp / "probe", [str(tmp / "probe.slab")])
    except OSError as e:
        require(False, f"this kernel cannot mount a file-backed EROFS image with device=: {e}")
    umount(tmp / "probe")


def _publish(src: Path, sp: str, data_dir: Path) -> dict:
    data_dir.mkdir(exist_ok=True)
    r = ferry("publish", str(src), "--store-path", sp, "--data-dir", str(data_dir), "--json")
    assert r.returncode == 0, r.stderr
    r = ferry(
        "image",
        sp,
        "-o",
        str(data_dir / f"{Path(sp).name}.erofs"),
        "--data-dir",
        str(data_dir),
        "--json",
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _dump_counts(image: Path, devices: list[str]) -> dict[str, int]:
    out = subprocess.run(
        ["dump.erofs", *(f"--device={d}" for d in devices), "-s", "-S", str(image)],
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    want = {
        "inodes": r"Filesystem inode count:\s+(\d+)",
        "files": r"regular file count:\s+(\d+)",
        "dirs": r"directory count:\s+(\d+)",
        "links": r"symlink file count:\s+(\d+)",
        "bytes": r"total original file size:\s+(\d+)",
    }
    return {k: int(re.search(rx, out).group(1)) for k, rx in want.items()}  # type: ignore[union-attr]


def _our_counts(image: Path) -> dict[str, int]:
    img = Image(image.read_bytes())
    kinds = [w.inode for w in img.walk()]
    return {
        "inodes": img.sb.inos,
        "files": sum(i.kind == "file" for i in kinds),
        "dirs": sum(i.kind == "dir" for i in kinds),
        "links": sum(i.kind == "symlink" for i in kinds),
        "bytes": sum(i.size for i in kinds if i.kind == "file"),
    }


# A real tree of some 40 MB and 3,000 entries: the whole stdlib directory would be the
# host's choice (here 941 MB, with site-packages), and its size the test's run time.
STDLIB_PARTS = (
    "asyncio",
    "concurrent",
    "ctypes",
    "email",
    "encodings",
    "idlelib",
    "importlib",
    "json",
    "lib-dynload",
    "lib2to3",
    "tkinter",
    "unittest",
    "xml",
)


def _source(name: str, tmp: Path) -> Path:
    if name == "stdlib":
        src = tmp / "stdlib"
        src.mkdir()
        for f in STDLIB.glob("*.py"):
            shutil.copy2(f, src / f.name)
        for d in STDLIB_PARTS:
            if (STDLIB / d).is_dir():
                shutil.copytree(STDLIB / d, src / d, symlinks=True)
        return src
    src = tmp / "bin"
    src.mkdir()
    shutil.copy2(_biggest_program(), src / "program")
    return src


@pytest.mark.slow
@pytest.mark.parametrize("source", ["stdlib", "big binary"])
def test_real_trees_extract_and_agree_with_dump_erofs(source: str, tmp_path: Path) -> None:
    _tools()
    src = _source(source, tmp_path)
    got = _publish(src, "/nix/store/" + "1" * 32 + "-real-1.0", tmp_path / "store")
    image = Path(got["image"])
    r = fsck_extract(image, Path(got["devices"][0]), tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert on_disk(tmp_path / "out") == on_disk(src)
    assert _our_counts(image) == _dump_counts(image, got["devices"])


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.parametrize("source", ["stdlib", "big binary"])
def test_kernel_mounts_real_trees(source: str, tmp_path: Path) -> None:
    _kernel(tmp_path)
    src = _source(source, tmp_path)
    got = _publish(src, "/nix/store/" + "1" * 32 + "-real-1.0", tmp_path / "store")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount(Path(got["image"]), mnt, got["devices"])
    try:
        assert on_disk(mnt) == on_disk(src)
    finally:
        umount(mnt)


@pytest.mark.kernel
@pytest.mark.parametrize(
    "name",
    [
        "sizes around block and chunk limits",
        "names of any bytes up to 255",
        "5000 entries in one directory",
        "symlinks up to 4095 bytes",
    ],
)
def test_kernel_mounts_generated_trees(name: str, tmp_path: Path) -> None:
    _kernel(tmp_path)
    tree = EDGE_CASES[name]
    image, slab, _ = image_of(tree)
    (tmp_path / "meta.erofs").write_bytes(image)
    (tmp_path / "slab").write_bytes(slab.data)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mount(tmp_path / "meta.erofs", mnt, [str(tmp_path / "slab")])
    try:
        assert on_disk(mnt) == model(tree)
        assert all(
            os.lstat(os.path.join(os.fsencode(mnt), p)).st_uid == 0 for p in list(model(tree))[:50]
        )
    finally:
        umount(mnt)


@pytest.mark.kernel
@pytest.mark.slow
def test_kernel_mounts_the_stdlib_and_two_versions_share_chunks(tmp_path: Path) -> None:
    _kernel(tmp_path)
    _tools()
    store = tmp_path / "store"
    v1 = tmp_path / "v1"
    shutil.copytree(STDLIB / "json", v1 / "json")
    shutil.copytree(STDLIB / "email", v1 / "email")
    (v1 / "big.bin").write_bytes(trees.File(3_000_000, 5, True).data())
    v2 = tmp_path / "v2"
    shutil.copytree(v1, v2, symlinks=True)
    (v2 / "json" / "__init__.py").write_text("# version 2\n")
    with open(v2 / "big.bin", "r+b") as f:  # one chunk of the big file changes
        f.seek(1_000_000)
        f.write(b"new bytes")
    a = _publish(v1, "/nix/store/" + "2" * 32 + "-pkg-1.0", store)
    b = _publish(v2, "/nix/store/" + "3" * 32 + "-pkg-1.1", store)
    assert a["devices"] == b["devices"]  # one slab holds both
    ia, ib = Image(Path(a["image"]).read_bytes()), Image(Path(b["image"]).read_bytes())
    ca, cb = ia.chunks(ia.lookup(b"big.bin")), ib.chunks(ib.lookup(b"big.bin"))
    assert (
        sum(x == y for x, y in zip(ca, cb)) == len(ca) - 1
    )  # all but the changed chunk: same blocks
    same = ia.chunks(ia.lookup(b"email/message.py")) == ib.chunks(ib.lookup(b"email/message.py"))
    assert same and all(c.device_id == 1 and c.blkaddr != layout.NULL_ADDR for c in ca)
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    m1.mkdir()
    m2.mkdir()
    mount(Path(a["image"]), m1, a["devices"])
    try:
        mount(Path(b["image"]), m2, b["devices"])
        try:
            assert on_disk(m1) == on_disk(v1)
            assert on_disk(m2) == on_disk(v2)
        finally:
            umount(m2)
    finally:
        umount(m1)


def _listing(d: Path) -> list[tuple[str, int]]:
    """`ls -fai`: every name readdir gives, in its order, with the inode it gives."""
    out = subprocess.run(["ls", "-fai", str(d)], capture_output=True, text=True, check=True).stdout
    return [(name, int(ino)) for ino, name in (line.split(maxsplit=1) for line in out.splitlines())]


def _stat(p: Path) -> tuple[int, ...]:
    s = os.stat(p)
    return (s.st_mode, s.st_nlink, s.st_uid, s.st_gid, s.st_size, s.st_mtime_ns)


@pytest.mark.kernel
def test_root_and_subdirectories_look_as_in_an_image_mkfs_erofs_made(tmp_path: Path) -> None:
    """A mount root of inode 0 hid `.` and `..` from `ls -fa`: compare with the kernel
    tools' own image of the same tree."""
    _kernel(tmp_path)
    require(shutil.which("mkfs.erofs") is not None, "erofs-utils is not installed")
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"x" * 5000)
    (src / "top").write_bytes(b"hello\n")
    (src / "link").symlink_to("sub/f")
    # As Nix leaves a store path, which is what ferry's images hold.
    for f in (src / "sub" / "f", src / "top"):
        f.chmod(0o444)
    for d in (src / "sub" / "deeper", src / "sub", src):
        d.chmod(0o555)
    got = _publish(src, "/nix/store/" + "4" * 32 + "-dirs-1.0", tmp_path / "store")
    theirs = tmp_path / "mkfs.erofs"
    subprocess.run(
        ["mkfs.erofs", "--quiet", "-T1", "--all-root", str(theirs), str(src)],
        check=True,
        timeout=60,
    )
    ours_mnt, theirs_mnt = tmp_path / "ours", tmp_path / "theirs"
    ours_mnt.mkdir()
    theirs_mnt.mkdir()
    mount(Path(got["image"]), ours_mnt, got["devices"])
    try:
        mount(theirs, theirs_mnt, [])
        try:
            for rel in (".", "sub", "sub/deeper"):
                ours, ref = _listing(ours_mnt / rel), _listing(theirs_mnt / rel)
                assert [n for n, _ in ours] == [n for n, _ in ref], rel
                assert _stat(ours_mnt / rel) == _stat(theirs_mnt / rel), rel
                inos = dict(ours)
                assert inos["."] == os.stat(ours_mnt / rel).st_ino != 0
            assert dict(_listing(ours_mnt / "sub"))[".."] == os.stat(ours_mnt).st_ino
            assert dict(_listing(ours_mnt / "sub/deeper"))[".."] == os.stat(ours_mnt / "sub").st_ino
        finally:
            umount(theirs_mnt)
    finally:
        umount(ours_mnt)
