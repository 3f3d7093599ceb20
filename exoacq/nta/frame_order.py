"""The linker's frame order for one capture: feature tables back in ``seq`` order, and which never come.

Locate workers finish frames out of order; the linker must link them in the
order they were taken. Normally every ``seq`` from 0 to ``frames_sent - 1``
arrives. When a locate worker dies, the frames queued for it are gone; when
the linker itself dies, the restarted one gets the capture again ("resumed")
and the frames before its first one are gone. This class decides, soundly,
which sequence numbers will never arrive, so that the capture continues
instead of waiting for them, and counts them (``lost``): the result then
uses only the frames actually tracked, and says how many were not.

The proof that ``seq`` k will never arrive: ZeroMQ's PUSH queues each frame
to one worker at send time, and each worker's path (daemon -> worker ->
linker) is first-in first-out; so once every live worker has delivered a
frame sent after k (a larger ``seq``), k is in no live worker's path: it was
with a dead one. At the end of a capture (``frames_sent`` known) and after a
quiet period, whatever has not come is lost too.
"""
from __future__ import annotations

from typing import Any, Iterator


class FrameOrder:
    def __init__(self, resumed: bool = False):
        #: The next sequence number to link; None (resumed) until the first frame is known.
        self.next_seq: int | None = None if resumed else 0
        self.pending: dict[int, Any] = {}
        #: The highest ``seq`` each worker (pid) delivered in this capture.
        self.delivered: dict[int, int] = {}
        #: Frames linked, and frames sent that will never be linked.
        self.tracked = 0
        self.lost = 0
        #: Losses are possible (a worker died, or the linker was restarted): look for them.
        self.expect_losses = resumed

    def add(self, seq: int, worker: int | None, item: Any, live_workers: set[int]) -> Iterator[Any]:
        """Take one frame's features; yield the items now in order (each exactly once)."""
        if worker is not None:
            self.delivered[worker] = max(seq, self.delivered.get(worker, -1))
        if self.next_seq is not None and seq < self.next_seq:
            return  # a frame already counted lost (a straggler): it stays lost, never linked out of order
        self.pending[seq] = item
        yield from self.settle(live_workers)

    def settle(self, live_workers: set[int]) -> Iterator[Any]:
        """Yield the frames in order, skipping (and counting) the ones proven never to arrive."""
        if self.next_seq is None:
            if not self.pending or not self._all_delivered_above(-1, live_workers):
                return
            self.next_seq = min(self.pending)  # each worker's first frame is its smallest
            self.lost += self.next_seq  # frames 0 .. next_seq - 1 went to the linker that died
        while self.pending:
            if self.next_seq in self.pending:
                yield self.pending.pop(self.next_seq)
                self.tracked += 1
            elif self.expect_losses and self._all_delivered_above(self.next_seq, live_workers):
                self.lost += 1
            else:
                return
            self.next_seq += 1

    def finish(self, frames_sent: int) -> Iterator[Any]:
        """The capture is over and nothing more will come: the rest in order, the missing ones lost."""
        start = self.next_seq
        if start is None:  # resumed, and not every worker delivered: the first frame that came starts it
            start = min(self.pending, default=frames_sent)
            self.lost += start
        for seq in range(start, frames_sent):
            if seq in self.pending:
                yield self.pending.pop(seq)
                self.tracked += 1
            else:
                self.lost += 1
        self.next_seq = frames_sent
        self.pending.clear()

    def complete(self, frames_sent: int | None) -> bool:
        return frames_sent is not None and self.next_seq is not None and self.next_seq >= frames_sent

    def _all_delivered_above(self, seq: int, live_workers: set[int]) -> bool:
        return bool(live_workers) and all(self.delivered.get(w, -1) > seq for w in live_workers)
