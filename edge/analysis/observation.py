"""One analysed frame of one input: the boundary type the CSV, the plot and the annotator all consume."""

from __future__ import annotations

from dataclasses import dataclass

from edge.publish.payloads import FaceResult


@dataclass(frozen=True)
class FrameObservation:
    input: str  # the file as named on the command line (or found in a named folder)
    frame: int  # 1-based, as OpenFace numbers frames
    timestamp: float  # seconds from the start of the input; 0 for a photo
    faces: tuple[FaceResult, ...]  # tracked faces with valid outputs; empty when none was found
