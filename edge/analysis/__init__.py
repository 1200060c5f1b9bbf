"""What `affect-sensor analyze` makes of files for people who study faces: an OpenFace-style per-frame CSV,
annotated images and videos, time-series plots and a progress bar, one module each.

Everything here runs on the device runtime (OpenCV + NumPy); only `plot` needs matplotlib, imported when used.
"""


class AnalysisError(Exception):
    """A bad input or output path for `analyze`: the message names the file and what is wrong."""
