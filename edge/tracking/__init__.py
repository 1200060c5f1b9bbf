"""Stable face track ids between detector runs, and the detect/track/align front end."""

from edge.tracking.frontend import AlignedFace, FaceFrontEnd, FrameFaces, StageTimes
from edge.tracking.iou_tracker import IoUTracker, Track, TrackUpdate

__all__ = ["AlignedFace", "FaceFrontEnd", "FrameFaces", "IoUTracker", "StageTimes", "Track", "TrackUpdate"]
