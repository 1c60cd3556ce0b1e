"""The docs cannot drift from the code: the configuration reference is generated, every
option it documents is one the code knows (and the reverse), and `--help` is complete for
`ferry` and every subcommand."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from node.cli import main, parser, reference
from node.daemon import config as nodeconfig
from node.exchange import limits as peerlimits
from tests.cli import ferry
from trust import policyfile

DOCS = Path(__file__).parents[2] / "docs"


def test_the_configuration_reference_is_the_generated_one() -> None:
    assert (DOCS / "configuration.md").read_text() == reference.markdown(), (
        "docs/configuration.md is stale: python -m node.cli.reference > docs/configuration.md"
    )


def _documented(section: str) -> list[str]:
    text = (DOCS / "configuration.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", body, re.M)


def test_every_documented_setting_is_known_to_the_code_and_every_setting_is_documented(
    tmp_path: Path,
) -> None:
    documented = _documented("Node settings")
    assert documented == list(nodeconfig.SETTINGS)
    known = {f.name for f in nodeconfig.dataclasses.fields(nodeconfig.NodeConfig)} - {
        "source",
        "flags",
        "limits",  # a table of its own, below
    }
    assert set(documented) == known
    limits = _documented("Per-peer limits")
    assert limits == list(peerlimits.meanings())
    for name, default in nodeconfig.dataclasses.asdict(peerlimits.DEFAULT).items():
        parsed = nodeconfig.parse(f"[limits]\n{name} = {nodeconfig.toml_value(default)}\n", "t")
        assert getattr(parsed.limits, name) == default
    # Each one, set to its documented default, is accepted by the parser the node uses.
    for name, default in nodeconfig.defaults().items():
        if default is not None:
            nodeconfig.parse(f"{name} = {nodeconfig.toml_value(default)}\n", "test")
    flags = re.findall(
        r"`(--[a-z-]+)`", (DOCS / "configuration.md").read_text().split("## Trust policy")[0]
    )
    run = _subparsers(parser())["node"]
    run_flags = {o for a in _subparsers(run)["run"]._actions for o in a.option_strings}
    assert flags and set(flags) <= run_flags
    assert _documented("Trust policy file") == list(policyfile.FIELDS)
    policy = tmp_path / "p.toml"
    policy.write_text(
        'trusted = ["a-1:' + "A" * 43 + '="]\nthreshold = 1\non_conflict = "majority"\n'
    )
    policyfile.load(str(policy))  # every documented field is accepted


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _walk(
    p: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    out = [(path, p)]
    for name, sub in _subparsers(p).items():
        out += _walk(sub, (*path, name))
    return out


COMMANDS = _walk(parser())


@pytest.mark.parametrize("path, p", COMMANDS, ids=[" ".join(c) or "ferry" for c, _ in COMMANDS])
def test_help_is_complete(path: tuple[str, ...], p: argparse.ArgumentParser) -> None:
    assert p.description, f"ferry {' '.join(path)} has no description"
    for a in p._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        assert a.help, f"ferry {' '.join(path)}: {a.option_strings or a.dest} has no help text"
    subs = _subparsers(p)
    if subs:
        choices = {
            c.dest
            for a in p._actions
            if isinstance(a, argparse._SubParsersAction)
            for c in a._choices_actions
        }
        assert set(subs) == choices, (
            f"ferry {' '.join(path)}: subcommands without a help line: {set(subs) - choices}"
        )


def test_help_runs_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    r = ferry("--help")  # once as a user runs it; the parser is what the rest is about
    assert r.returncode == 0 and "usage:" in r.stdout, r.stderr
    for path, _ in [c for c in COMMANDS if len(c[0]) == 1]:
        with pytest.raises(SystemExit) as exit:
            main([*path, "--help"])
        out = capsys.readouterr()
        assert exit.value.code == 0 and "usage:" in out.out, (path, out.err)


@pytest.mark.slow(seconds=30)
def test_pip_install_gives_a_ferry_whose_units_verify(tmp_path: Path) -> None:
    """`pip install .` into a fresh venv: `ferry` on its PATH, and `ferry service install`
    writes units that start that ferry, point at docs that exist, and verify."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import require

    require(shutil.which("systemd-analyze") is not None, "systemd-analyze is not installed")
    root = Path(__file__).parents[2]
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # The deps are the test venv's business; this checks what the package installs.
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            str(root),
        ],
        capture_output=True,
        text=True,
    )
    assert pip.returncode == 0, pip.stderr
    # Its dependencies from the test venv (a path line: that venv's own .pth files, and
    # so its editable ferry, are not loaded; `node` is the one just installed).
    import site
    import sysconfig

    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    ferry = venv / "bin" / "ferry"
    version = subprocess.run([str(ferry), "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("ferry "), version.stderr
    assert "unknown" not in version.stdout
    units = tmp_path / "units"
    r = subprocess.run(
        [str(ferry), "service", "install", "--dir", str(units), "--data-dir", "/var/lib/ferry"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "systemd-analyze verify: ok" in r.stdout, r.stderr
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import node; print(node.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the checkout: `-c` puts the working directory on sys.path
    )
    assert where.stdout.startswith(str(venv)), where  # the installed ferry, not the checkout
    service = (units / "ferry.service").read_text()
    assert f"ExecStart={ferry} node run --data-dir /var/lib/ferry" in service
    assert "Type=notify" in service and "ExecReload=" in service
    assert "KillMode=process" in service and "Requires=ferry.socket" in service
    assert "ListenStream=127.0.0.1:4738" in (units / "ferry.socket").read_text()
    for unit in ("ferry.service", "ferry.socket"):
        (doc,) = [
            line.removeprefix("Documentation=file://")
            for line in (units / unit).read_text().splitlines()
            if line.startswith("Documentation=")
        ]
        assert doc.startswith(str(venv)) and Path(doc).is_file(), doc
    # As shipped: the units verify against the files they name.
    r = subprocess.run(
        ["systemd-analyze", "verify", str(units / "ferry.socket"), str(units / "ferry.service")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "ferry." not in r.stderr, r.stderr
