"""`ferry image` and `ferry inspect` as a user meets them."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.cli import ferry

SP = "/nix/store/" + "5" * 32 + "-cli-1.0"


def test_image_then_inspect(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tool").write_bytes(b"#!/bin/sh\n" + b"x" * 100_000)
    (src / "bin" / "tool").chmod(0o755)
    (src / "README").write_text("hello\n")
    (src / "link").symlink_to("bin/tool")
    store = str(tmp_path / "store")
    os.mkdir(store)
    assert ferry("publish", str(src), "--store-path", SP, "--data-dir", store).returncode == 0
    r = ferry("image", SP, "-o", str(tmp_path / "x.erofs"), "--data-dir", store)
    assert r.returncode == 0 and "device=" in r.stdout and "slab-000001" in r.stdout
    r = ferry("inspect", str(tmp_path / "x.erofs"), "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    by_path = {e["path"]: e for e in got["entries"]}
    assert by_path["/bin/tool"]["mode"] == "-r-xr-xr-x" and by_path["/bin/tool"]["size"] == 100_010
    assert by_path["/link"]["data"] == "-> bin/tool"
    assert got["devices"] == ["slab-000001"] and got["inodes"] == 5
    r = ferry("inspect", str(tmp_path / "x.erofs"))
    assert r.returncode == 0 and "/bin/tool" in r.stdout


def test_mistakes_get_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"\0" * 5000)
    r = ferry("inspect", str(tmp_path / "junk"))
    assert r.returncode == 1 and "not a usable EROFS image: no EROFS magic" in r.stderr
    r = ferry("inspect", str(tmp_path / "missing"))
    assert r.returncode == 1 and "missing" in r.stderr
    store = str(tmp_path / "store")
    os.mkdir(store)
    r = ferry("image", SP, "-o", str(tmp_path / "x.erofs"), "--data-dir", store)
    assert r.returncode == 1 and "is not in this ferry store" in r.stderr
    src = tmp_path / "one"
    src.write_text("a lone file\n")
    assert ferry("publish", str(src), "--store-path", SP, "--data-dir", store).returncode == 0
    r = ferry("image", SP, "-o", str(tmp_path / "x.erofs"), "--data-dir", store)
    assert r.returncode == 1 and "single file" in r.stderr
