"""sd_notify(3) messages: their form, an abstract socket, and nothing without systemd."""

from __future__ import annotations

import os
import socket

import pytest

from node.daemon import notify


def test_messages_and_the_abstract_namespace() -> None:
    assert notify.encode(READY="1", STATUS="up") == b"READY=1\nSTATUS=up\n"
    with pytest.raises(ValueError):
        notify.encode(STATUS="two\nlines")
    name = f"ferry-test-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(5)
        assert notify.send(b"READY=1\n", {"NOTIFY_SOCKET": "@" + name})
        assert manager.recv(100) == b"READY=1\n"
    assert not notify.send(b"READY=1\n", {})  # not run by systemd: nothing to tell
    assert not notify.send(b"READY=1\n", {"NOTIFY_SOCKET": "/nonexistent/sock"})  # logged
