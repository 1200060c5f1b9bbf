"""Contact sheets of generated faces, to look at what training sees.

`python -m quantize.data.contact_sheet --kind london --out /tmp/contact_london.png`
(also `affect-quantize contact-sheet`). Rows: one person each; the first columns
are single AUs at full intensity, then FACS-prior expressions; for London the
real neutral and smiling photos of the first person end the sheet.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
# cv2, numpy and the generator are imported inside the functions: the CLI imports this module to build its parser.


def _label(image: np.ndarray, text: str, scale: int) -> np.ndarray:
    import cv2

    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    cv2.rectangle(big, (0, 0), (big.shape[1], 13), (0, 0, 0), -1)
    cv2.putText(big, text, (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 0), 1, cv2.LINE_AA)
    return big


def build_sheet(kind: str, persons: list[str], crop_size: int = 112, scale: int = 1, seed: int = 0) -> np.ndarray:
    """RGB sheet: per person, neutral + each AU alone + each expression's prototype AUs (no photometric jitter)."""
    import numpy as np

    from edge.labels import BASIC_EXPRESSIONS, DEFAULT_LABELS, FACS_PRIOR
    from quantize.data.generate import LondonWarper, _procedural
    from quantize.data.london import LondonFaces

    faces = LondonFaces() if kind == "london" else None
    warper = LondonWarper(faces, crop_size) if faces is not None else None
    columns: list[tuple[str, dict[int, float]]] = [("neutral", {})]
    columns += [(f"AU{n}", {n: 1.0}) for n in DEFAULT_LABELS.aus]
    columns += [(e, {n: 0.9 for n in FACS_PRIOR[e]}) for e in BASIC_EXPRESSIONS if e != "neutral"]
    zero = np.zeros((5, 2), np.float32)
    rows = []
    for person in persons:
        tiles = []
        for name, intensity in columns:
            rng = np.random.default_rng(seed)
            if warper is not None:
                img = warper.render(person, intensity, rng, noise=zero)
            else:
                img = _procedural(person, intensity, crop_size, rng, noise=zero, render_seed=seed)
            tiles.append(_label(img, f"{person} {name}" if name == "neutral" else name, scale))
        if faces is not None:
            from quantize.data.generate import london_photo_samples

            for s in london_photo_samples([person], crop_size, faces):
                tiles.append(_label(s.image, "photo " + BASIC_EXPRESSIONS[s.expression], scale))
        rows.append(np.hstack(tiles))
    width = max(r.shape[1] for r in rows)
    return np.vstack([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("contact-sheet", help="render a PNG grid of generated faces (each AU, each expression)")
    _arguments(p)
    p.set_defaults(func=_run)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=("london", "procedural"), default="london")
    p.add_argument("--persons", type=int, default=4, help="number of people (rows)")
    p.add_argument("--crop-size", type=int, default=112)
    p.add_argument("--scale", type=int, default=2, help="upscale tiles for viewing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)


def _run(args: argparse.Namespace) -> int:
    import cv2

    from quantize.data.london import LondonFaces, london_split

    if args.kind == "london":
        people = london_split(LondonFaces().persons()).train[: args.persons]
    else:
        people = [f"proc-sheet-{i}" for i in range(args.persons)]
    sheet = build_sheet(args.kind, people, args.crop_size, args.scale, args.seed)
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError("PNG encoding failed")
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(png.tobytes())
    tmp.replace(out)  # atomic: never a half-written sheet
    print(f"wrote {out} ({sheet.shape[1]}x{sheet.shape[0]}, {len(people)} people)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quantize.data.contact_sheet", description=__doc__)
    _arguments(parser)
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
