from __future__ import annotations

import json
import os

import pytest

from ondemand import probe
from tests.cli import ferry
from tests.conftest import require


def test_doctor_reports_every_backend_and_a_choice() -> None:
    r = ferry("doctor", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    names = [b["name"] for b in got["backends"]]
    assert names == ["fanotify", "cachefiles", "materialize"]
    assert got["chosen"] in names and got["backends"][2]["usable"]
    for b in got["backends"]:
        assert b["usable"] == (not b["missing"])
    assert "ferry mount will use" in ferry("doctor").stdout


def test_missing_kernel_options_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(probe, "kernel_config", lambda: {"CONFIG_EROFS_FS": "y"})
    report = probe.probe()
    fan = report.backends[0]
    assert not fan.usable
    assert "CONFIG_FANOTIFY_ACCESS_PERMISSIONS=y (kernel config)" in fan.missing
    assert "CONFIG_EROFS_FS_BACKED_BY_FILE=y (kernel config)" in fan.missing
    assert report.chosen == "materialize"


@pytest.mark.kernel
def test_fanotify_is_chosen_where_it_works() -> None:
    require(os.geteuid() == 0, "needs root")
    report = probe.probe()
    require(
        report.backends[0].usable, f"fanotify backend unavailable: {report.backends[0].missing}"
    )
    assert report.chosen == "fanotify"


def test_rebuilt_modules_count_though_the_config_says_otherwise(
    monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    # Debian's /boot config lacks the ondemand options; modules rebuilt with them (as
    # docs/operations.md shows) and loaded have their functions in /proc/kallsyms.
    kallsyms = tmp_path / "kallsyms"
    kallsyms.write_text(
        "ffffffffc0a01000 t cachefiles_ondemand_daemon_read\t[cachefiles]\n"
        "ffffffffc0b02000 T erofs_fscache_register_fs\t[erofs]\n"
        "ffffffff81000000 T _stext\n"
    )
    assert probe.loaded_options(str(kallsyms)) == {
        "CONFIG_CACHEFILES_ONDEMAND",
        "CONFIG_EROFS_FS_ONDEMAND",
    }
    assert probe.loaded_options(str(tmp_path / "none")) == set()
    monkeypatch.setattr(probe, "kernel_config", lambda: {"CONFIG_EROFS_FS": "m"})
    monkeypatch.setattr(probe, "loaded_options", lambda: {"CONFIG_CACHEFILES_ONDEMAND"})
    cache = probe.probe().backends[1]
    assert "CONFIG_CACHEFILES_ONDEMAND=y (kernel config)" not in cache.missing
    assert "CONFIG_EROFS_FS_ONDEMAND=y (kernel config)" in cache.missing
