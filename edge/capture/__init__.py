"""Frame capture: sources chosen by URI, a latest-frame slot, and a reconnecting capture thread."""

from edge.capture.backoff import Backoff
from edge.capture.frame import Frame, FrameSource, SourceError, SourceTimeout
from edge.capture.reader import CaptureStats, CaptureThread
from edge.capture.slot import LatestFrameSlot
from edge.capture.sources import open_source

__all__ = ["Backoff", "CaptureStats", "CaptureThread", "Frame", "FrameSource", "LatestFrameSlot", "SourceError",
           "SourceTimeout", "open_source"]
