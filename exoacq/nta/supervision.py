"""An NTA run that outlives a crash in its tracking core: what the daemon keeps, and what the result says.

When the linker dies, the daemon restarts the tracking core
(exoacq.nta.pipeline) and hands the new linker the captures under way again,
marked ``resumed`` (:class:`TrackerReplay`); it links from the first frame it
receives. When a locate worker dies, the frames queued for it never arrive.
Either way the linker counts the frames it will never link (``frames_lost``,
exoacq.nta.frame_order); here they become frames dropped by the tracker in
the run's result, and the run's result carries ``degraded``: the reasons, in
words. Sizes and concentrations use only the frames actually tracked (the
tracker's particles per frame are over the frames it linked), so a degraded
result is less precise, never wrong. A kept raw video is complete either way:
re-processing it (``exoacq runs reprocess``) gives the full result.
"""
from __future__ import annotations

from typing import Any


class TrackerReplay:
    """The run messages (``run.begin``, ``run.end``) of the captures the linker has not returned yet,
    kept so that a restarted linker gets them again."""

    def __init__(self) -> None:
        self.captures: dict[str, dict[str, dict[str, Any]]] = {}

    def sent(self, topic: str, message: dict[str, Any]) -> None:
        capture = str(message.get("run_id"))
        if topic == "run.begin":
            self.captures[capture] = {"run.begin": message}
        elif topic == "run.end" and capture in self.captures:
            self.captures[capture]["run.end"] = message

    def done(self, capture: str) -> None:
        self.captures.pop(capture, None)

    def forget_run(self, run_id: str) -> None:
        for capture in [c for c in self.captures if c.partition("/")[0] == run_id]:
            del self.captures[capture]

    def replay(self) -> list[tuple[str, dict[str, Any]]]:
        """The messages for a restarted linker, in order: each capture ``resumed``, and its end if it ended."""
        out: list[tuple[str, dict[str, Any]]] = []
        for messages in self.captures.values():
            out.append(("run.begin", {**messages["run.begin"], "resumed": True}))
            if "run.end" in messages:
                out.append(("run.end", messages["run.end"]))
        return out


def frames_lost(data: dict[str, Any]) -> int:
    """Frames the linker will never link, over the run's captures (from its progress and result events)."""
    return sum(data.get("frames_lost", {}).values())


def with_tracker_losses(frames: dict[str, Any], lost: int) -> dict[str, Any]:
    """A ``frames`` block (progress or result) with the frames lost in the tracking core counted as
    dropped by the tracker (``processed + dropped_by.tracker == acquired`` holds again)."""
    if not lost:
        return frames
    by = dict(frames.get("dropped_by") or {"camera": 0, "tracker": 0})
    by["tracker"] = by.get("tracker", 0) + lost
    return {**frames, "dropped": (frames.get("dropped") or 0) + lost, "dropped_by": by}


def mark_degraded(document: dict[str, Any], reasons: list[str], lost: int) -> None:
    """``degraded`` (the reasons; empty when nothing went wrong) and a warning for each reason."""
    document["degraded"] = list(reasons)
    if not reasons and not lost:
        return  # as a re-processing of the same frames would make it
    frames = document["frames"] = {**with_tracker_losses(document["frames"], lost), "lost_in_tracker": lost}
    # frames refused while the core restarted are not "fell behind": say what happened instead
    document["warnings"] = [w for w in document["warnings"] if "fell behind the camera" not in w]
    document["warnings"].append(
        f"{frames['dropped_by']['tracker']} of {frames['acquired']} frames were not tracked ({lost} lost in the "
        "tracking core, the others refused while it was restarted or behind the camera); the results use the "
        f"{frames['processed']} frames it tracked")
    for reason in reasons:
        document["warnings"].append(f"degraded run: {reason}")
