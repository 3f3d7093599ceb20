"""An NTA run's ``nta.result`` document, from its captures' tracking results.

One function for the live run (the daemon, once the tracking core has
returned every capture) and for re-processing a stored run's videos
(:mod:`exoacq.nta.reprocess`), so that both give the same document for the
same tracks.
"""
from __future__ import annotations

from typing import Any

from exoacq.bus import make_document
from exoacq.nta.results import combine_captures


def build_result(*, run_id: str, schema: str, instrument: str, complete: bool, run_settings: dict[str, Any],
                 captures: list[dict[str, Any]], acquisition: dict[str, Any], tracking: dict[str, Any],
                 instruments: dict[str, Any], detection_volume_source: str) -> dict[str, Any]:
    """The result document of a run from its ``captures`` (the tracking core's ``result`` events, in
    capture order: ``capture``, ``summary``, ``tracking``, ``frames_processed``, ``files``) and the
    acquisition counters (frames planned, acquired, dropped)."""
    summary = combine_captures(captures)
    frames = {"planned": acquisition.get("frames_planned"), "acquired": acquisition.get("frames_acquired", 0),
              "processed": sum(c["frames_processed"] for c in captures),
              "dropped": acquisition.get("frames_dropped", 0),
              "dropped_by": acquisition.get("frames_dropped_by", {"camera": 0, "tracker": 0})}
    warnings = list(summary.pop("warnings"))
    by = frames["dropped_by"]
    if by["tracker"]:
        warnings.append(f"{by['tracker']} of {frames['acquired']} frames were dropped: the tracking core "
                        "fell behind the camera; results use the frames it processed")
    if by["camera"]:
        warnings.append(f"the camera lost {by['camera']} frames: the acquisition fell behind its frame "
                        "clock (machine overloaded?)")
    frames["video_lost"] = acquisition.get("video_frames_lost", 0)
    if frames["video_lost"]:
        warnings.append(f"the kept video lacks {frames['video_lost']} of the {frames['acquired']} frames (writing "
                        "fell behind): re-processing cannot reproduce this result")
    return make_document(
        "nta.result", run_id, schema=schema, method="nta", instrument=instrument, complete=complete,
        sample=run_settings["sample"], dilution=run_settings["dilution"], duration_s=run_settings["duration_s"],
        **summary, frames=frames, warnings=warnings,
        degraded=[],  # the reasons, when the tracking core failed during the live run (exoacq.nta.supervision)
        detection_volume={"nl": tracking.get("detection_volume_nl"), "source": detection_volume_source},
        settings={"acquisition": run_settings, "tracking": tracking, "instruments": instruments},
    )
