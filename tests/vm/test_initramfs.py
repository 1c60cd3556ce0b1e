"""The VM's initramfs writer: newc archives that decode to what went in, and that a real
cpio lists and unpacks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.vm import initramfs
from tests.vm.initramfs import Entry

names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/"),
    min_size=1,
    max_size=40,
)
entries = st.lists(
    st.builds(Entry, names, st.sampled_from([0o100644, 0o100755]), st.binary(max_size=300)),
    max_size=8,
    unique_by=lambda e: e.name,
)


@given(entries)
def test_an_archive_decodes_to_its_entries(es: list[Entry]) -> None:
    assert initramfs.decode(initramfs.encode(es)) == es


@pytest.mark.vm  # with the VM tests, which install busybox
def test_busybox_cpio_unpacks_it(tmp_path: Path) -> None:
    busybox = shutil.which("busybox") or shutil.which("cpio")
    if busybox is None:
        pytest.skip("no busybox or cpio to check the format against (./run vm installs busybox)")
    archive = initramfs.encode(
        [
            Entry("bin", 0o040755),
            Entry("bin/tool", 0o100755, b"#!/bin/sh\necho hi\n"),
            Entry("bin/sh", 0o120777, b"busybox"),
            Entry("odd", 0o100644, b"x" * 5),
        ]
    )
    argv = [busybox, "cpio", "-i", "-d"] if busybox.endswith("busybox") else [busybox, "-i", "-d"]
    subprocess.run(argv, input=archive, cwd=tmp_path, check=True, capture_output=True)
    assert (tmp_path / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "bin" / "tool").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bin" / "sh").readlink() == Path("busybox")
    assert (tmp_path / "odd").read_bytes() == b"xxxxx"
