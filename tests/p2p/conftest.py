from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.p2p.nodes import Swarm


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Swarm]:
    """Node processes for one test, stopped at its end whatever happens."""
    s = Swarm(tmp_path / "nodes")
    yield s
    s.stop()
