"""Want-haves of chunks a node lacks, from all its block streams, indexed by digest.

A chunk that lands wakes only the streams waiting for that chunk. (Waking every stream to
look through all its want-haves costs streams x subscriptions per stored chunk: at a
thousand fetchers of one closure that was most of the simulator's time.) A store that
cannot say which chunks became servable (a batch committed) calls `stored(None)`, and
every stream looks through its own.
"""

from __future__ import annotations

from collections.abc import Iterable

import trio


class Subscriber:
    """One block stream's want-haves."""

    def __init__(self, book: Subscriptions) -> None:
        self._book = book
        self.digests: set[bytes] = set()
        self.ready: set[bytes] = set()  # landed since the stream last looked
        self.recheck = False  # something landed, which is not known: look through all
        self._event = trio.Event()

    def watch(self, digests: Iterable[bytes]) -> None:
        for d in digests:
            if d not in self.digests:
                self.digests.add(d)
                self._book._by_digest.setdefault(d, {})[self] = None

    def unwatch(self, digests: Iterable[bytes]) -> None:
        for d in digests:
            if d in self.digests:
                self.digests.discard(d)
                self._book._drop(d, self)

    def close(self) -> None:
        self.unwatch(list(self.digests))

    async def wait(self, peek: bool = False) -> tuple[set[bytes], bool]:
        """Until something this stream waits for may have landed: (digests that did, and
        whether to look through all of them as well). With `peek`, they stay for the
        next call."""
        while not (self.ready or self.recheck):
            await self._event.wait()
        ready, recheck = self.ready, self.recheck
        if peek:
            return ready, recheck
        self.ready, self.recheck = set(), False
        return ready, recheck

    def _wake(self) -> None:
        self._event.set()
        self._event = trio.Event()


class Subscriptions:
    def __init__(self) -> None:
        # Subscribers in subscription order (a dict, not a set: a set of objects iterates
        # in address order, and the simulator's runs must repeat).
        self._by_digest: dict[bytes, dict[Subscriber, None]] = {}

    def subscriber(self) -> Subscriber:
        return Subscriber(self)

    def stored(self, digests: Iterable[bytes] | None) -> None:
        """Chunks landed: `digests`, or None when the store cannot say which."""
        if digests is None:
            for s in dict.fromkeys(s for subs in self._by_digest.values() for s in subs):
                s.recheck = True
                s._wake()
            return
        for d in digests:
            for s in self._by_digest.pop(d, ()):
                s.digests.discard(d)
                s.ready.add(d)
                s._wake()

    def _drop(self, digest: bytes, s: Subscriber) -> None:
        subs = self._by_digest.get(digest)
        if subs is not None:
            subs.pop(s, None)
            if not subs:
                del self._by_digest[digest]

    def __len__(self) -> int:
        return len(self._by_digest)
