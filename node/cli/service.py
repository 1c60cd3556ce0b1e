"""`ferry service install`: the systemd units, written for this installation.

The units ship as templates (contrib/systemd, installed to <prefix>/share/ferry/systemd);
their ExecStart and Documentation name where ferry and its docs are on this machine, so
the installed units start the ferry that wrote them (a venv's, pipx's, the system's)
and pass `systemd-analyze verify`."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

from node.cli import Commands, ui

UNITS = ("ferry.service", "ferry.socket")
TEMPLATE_EXEC = "/usr/local/bin/ferry"
TEMPLATE_DOC = "file:///usr/share/doc/ferry/operations.md"
TEMPLATE_DATA_DIR = "/var/lib/ferry"


def add_parser(sub: Commands) -> None:
    p = sub.add_parser(
        "service",
        description="Install ferry as a systemd service: ferry.service (the node, Type=notify, "
        "reloaded by `systemctl reload ferry`) and ferry.socket (the Nix gateway's socket, held "
        "by systemd so Nix never finds it closed), both running this ferry.",
    )
    cmds = p.add_subparsers(dest="service_command", metavar="COMMAND", required=True)
    c = cmds.add_parser(
        "install",
        help="write the systemd units for this installation",
        description="Write ferry.service and ferry.socket into DIR with this installation's "
        "paths, and check them with `systemd-analyze verify` when it is there. Then: "
        "`systemctl daemon-reload && systemctl enable --now ferry.socket ferry.service`.",
    )
    c.add_argument(
        "--dir",
        default="/etc/systemd/system",
        help="where to write the units (default: %(default)s)",
    )
    c.add_argument(
        "--data-dir",
        default=TEMPLATE_DATA_DIR,
        metavar="DIR",
        help="the node's data directory (default: %(default)s, which systemd creates)",
    )
    c.set_defaults(run=run_install)


def ferry_command() -> str:
    """How to start this ferry from anywhere: its script, else its Python with -m."""
    script = os.path.abspath(sys.argv[0])
    if os.path.basename(script) == "ferry" and os.access(script, os.X_OK):
        return script
    return f"{sys.executable} -m node.cli"


def _shared(*parts: str) -> str | None:
    """A file installed with ferry (<prefix>/share/...), or in the checkout it runs from."""
    import node

    checkout = os.path.dirname(os.path.dirname(os.path.abspath(node.__file__)))
    installed = os.path.join(sys.prefix, "share", *parts)
    in_checkout = {
        ("doc", "ferry"): os.path.join(checkout, "docs"),
        ("ferry", "systemd"): os.path.join(checkout, "contrib", "systemd"),
    }[(parts[0], parts[1])]
    for path in (installed, os.path.join(in_checkout, *parts[2:])):
        if os.path.exists(path):
            return path
    return None


def render(template: str, command: str, docs: str | None, data_dir: str) -> str:
    out = template.replace(TEMPLATE_EXEC, command)
    out = out.replace(f"--data-dir {TEMPLATE_DATA_DIR}", f"--data-dir {data_dir}")
    if docs is not None:
        out = out.replace(TEMPLATE_DOC, f"file://{docs}")
    else:
        out = "\n".join(line for line in out.split("\n") if not line.startswith("Documentation="))
    return out.replace(
        "# Adjust to where ferry is installed (a venv: /opt/ferry/.venv/bin/ferry).\n",
        "# Written by `ferry service install` for the ferry installed here.\n",
    )


def run_install(args: argparse.Namespace) -> None:
    templates = _shared("ferry", "systemd")
    if templates is None:
        ui.fail("the unit templates are not installed with this ferry (reinstall it with pip)")
    docs = _shared("doc", "ferry", "operations.md")
    command = ferry_command()
    data_dir = os.path.abspath(args.data_dir)
    try:
        os.makedirs(args.dir, exist_ok=True)
        written = []
        for name in UNITS:
            with open(os.path.join(templates, name)) as f:
                text = render(f.read(), command, docs, data_dir)
            path = os.path.join(args.dir, name)
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            written.append(path)
    except OSError as e:
        ui.fail(f"{e.filename or args.dir}: {e.strerror} (run as root, or choose --dir)")
    for path in written:
        ui.out.print(f"wrote {path}", markup=False)
    analyze = shutil.which("systemd-analyze")
    if analyze:
        r = subprocess.run([analyze, "verify", *written], capture_output=True, text=True)
        if r.returncode:
            ui.fail(f"systemd-analyze verify found problems:\n{(r.stderr or r.stdout).strip()}")
        ui.out.print("systemd-analyze verify: ok", markup=False)
    ui.out.print(
        f"next: ferry init --data-dir {data_dir}\n"
        "      systemctl daemon-reload && systemctl enable --now ferry.socket ferry.service",
        markup=False,
    )
