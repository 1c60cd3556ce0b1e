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
