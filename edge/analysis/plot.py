"""Per track, expression probabilities and a few key AUs over time, as one PNG.

matplotlib is not part of the device install (the `plot` extra: `pip install -e ".[plot]"`);
it is imported only here, only when a plot is asked for, and its absence is
reported before any frame is processed. Photos have no time axis: they are
placed in the order analysed, which suits a folder of frames from one camera.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from edge.analysis import AnalysisError
from edge.analysis.atomic import file_mode
from edge.analysis.observation import FrameObservation
from edge.fsutil import atomic_write
from edge.labels import LabelSpace

# Brows (AU1 raise, AU4 lower), the smile (AU6 cheeks, AU12 lip corners) and the open mouth (AU25).
KEY_AUS = (1, 4, 6, 12, 25)
MAX_TRACKS = 6  # rows in the figure: the tracks seen longest
PHOTOS = "photos"
INSTALL_HINT = 'pip install matplotlib (from a checkout: pip install -e ".[plot]")'


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise AnalysisError(f"--plot needs matplotlib, which the device install leaves out: {INSTALL_HINT}") from None


@dataclass
class TrackSeries:
    source: str  # the video, or "photos" for all photos in the order analysed
    track_id: int
    x: list[float] = field(default_factory=list)
    expressions: dict[str, list[float]] = field(default_factory=dict)
    aus: dict[str, list[float]] = field(default_factory=dict)


@dataclass(frozen=True)
class PlotSummary:
    path: Path
    tracks: int  # tracks found
    shown: int  # tracks drawn (the longest MAX_TRACKS)


class PlotCollector:
    """Keeps only what the figure needs, per (source, track): x, expression and key-AU probabilities."""

    def __init__(self, labels: LabelSpace) -> None:
        self.labels = labels
        self.key_aus = [f"AU{n}" for n in KEY_AUS if n in labels.aus]
        self.series: dict[tuple[str, int], TrackSeries] = {}
        self.photos = 0

    def add(self, obs: FrameObservation, still: bool) -> None:
        if still:
            self.photos += 1
        source, x = (PHOTOS, float(self.photos)) if still else (obs.input, obs.timestamp)
        for face in obs.faces:
            s = self.series.get((source, face.track_id))
            if s is None:
                s = self.series[(source, face.track_id)] = TrackSeries(
                    source, face.track_id, expressions={e: [] for e in self.labels.expressions},
                    aus={a: [] for a in self.key_aus})
            s.x.append(x)
            for name, values in s.expressions.items():
                values.append(face.expressions[name])
            for key, values in s.aus.items():
                values.append(face.aus[key])

    def render(self, path: Path, title: str = "affect-sensor analyze") -> PlotSummary:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        tracks = sorted(self.series.values(), key=lambda s: len(s.x), reverse=True)[:MAX_TRACKS]
        tracks.sort(key=lambda s: (s.source, s.track_id))
        rows = max(1, len(tracks))
        fig = Figure(figsize=(11, 2.4 * rows + 0.6), dpi=80, layout="constrained")
        FigureCanvasAgg(fig)
        shown = f"{len(tracks)} of {len(self.series)} tracks (the longest)" if len(self.series) > len(tracks) else ""
        fig.suptitle(f"{title}{': ' + shown if shown else ''}", fontsize=11)
        if not tracks:
            ax = fig.add_subplot(1, 1, 1)
            ax.text(0.5, 0.5, "no face found in the inputs", ha="center", va="center", fontsize=14)
            ax.set_axis_off()
        colours = {name: f"C{i}" for i, name in enumerate(self.labels.expressions)}
        for row, s in enumerate(tracks):
            left, right = fig.add_subplot(rows, 2, 2 * row + 1), fig.add_subplot(rows, 2, 2 * row + 2)
            where = Path(s.source).name if s.source != PHOTOS else PHOTOS
            marker = "o" if len(s.x) < 20 else None
            for name, values in s.expressions.items():
                left.plot(s.x, values, label=name, color=colours[name], marker=marker, markersize=3, linewidth=1.2)
            for i, (key, values) in enumerate(s.aus.items()):
                right.plot(s.x, values, label=key, color=f"C{i}", marker=marker, markersize=3, linewidth=1.2)
            left.set_title(f"{where}, face {s.track_id}: expressions", fontsize=9, loc="left")
            right.set_title(f"{where}, face {s.track_id}: key AUs", fontsize=9, loc="left")
            for ax in (left, right):
                ax.set_ylim(-0.02, 1.02)
                ax.set_ylabel("probability", fontsize=8)
                if s.source == PHOTOS:
                    ax.set_xlabel("photo (order analysed)", fontsize=8)
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                else:
                    ax.set_xlabel("time (s)", fontsize=8)
                if len(set(s.x)) == 1:  # one point: give it some room rather than a zero-width axis
                    ax.set_xlim(s.x[0] - 1, s.x[0] + 1)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        atomic_write(path, buffer.getvalue(), mode=file_mode())
        return PlotSummary(path, len(self.series), len(tracks))
