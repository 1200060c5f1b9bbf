"""`affect-quantize labels`: print the label spaces and the FACS prior every model is built on."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("labels", help="print AU and expression label spaces and the FACS emotion->AU prior")
    p.add_argument("--contempt", action="store_true", help="include the optional contempt class")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_labels)


def _labels(args: argparse.Namespace) -> int:
    from edge.labels import BASIC_EXPRESSIONS, DATASET_AUS, LabelSpace, action_unit, facs_prior

    expressions = (*BASIC_EXPRESSIONS, "contempt") if args.contempt else BASIC_EXPRESSIONS
    space = LabelSpace(expressions=expressions)
    prior = facs_prior(space)
    if args.json:
        print(json.dumps({
            "aus": [{"au": n, "name": action_unit(n).name, "text": action_unit(n).text} for n in space.aus],
            "expressions": space.expression_texts(),
            "datasets": {k: list(v) for k, v in DATASET_AUS.items()},
            "prior": prior.tolist(),
        }, indent=2))
        return 0
    print(f"{'AU':<6}{'FACS name':<22}{'labelled by':<14}")
    for n in space.aus:
        by = ",".join(d for d, aus in DATASET_AUS.items() if n in aus) or "-"
        print(f"AU{n:<4}{action_unit(n).name:<22}{by:<14}")
    print("\nFACS prior (1 = prototype AU):")
    print(" " * 11 + "".join(f"{n:>4}" for n in space.aus))
    for name, row in zip(space.expressions, prior, strict=True):
        print(f"{name:<11}" + "".join(f"{'   #' if v >= 1 else '   .'}" for v in row))
    return 0
