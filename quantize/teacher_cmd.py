"""`affect-quantize teacher train|eval`: train the SSM teacher and report its metrics.

Training writes into `--out`: `checkpoint.pt` (resumable), and at the end
`thresholds.json` (calibrated on the validation split only), `head.npz`
(docs/head.md arrays incl. `au_threshold`) and `metrics.json` / `metrics.txt`
(validation and, at validation-calibrated thresholds, the holdout people).
Under `torchrun` every rank trains; rank 0 writes and reports.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacher", help="train / evaluate the SSM teacher")
    tsub = p.add_subparsers(dest="teacher_command", metavar="ACTION", required=True)

    t = tsub.add_parser("train", help="train (or resume) a teacher; runs under torchrun for DDP")
    t.add_argument("--config", default="tiny", help="model preset: tiny | base")
    t.add_argument("--out", type=Path, required=True, help="run directory (resumes from its checkpoint)")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch", type=int, default=None, help="AU and FE batch size per rank")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-every", type=int, default=None)
    t.add_argument("--ckpt-every", type=int, default=None)
    t.add_argument("--n-train", type=int, default=None, help="generated training faces")
    t.add_argument("--n-val", type=int, default=None)
    t.add_argument("--n-holdout", type=int, default=None)
    t.add_argument("--data-kind", choices=["procedural", "london", "mixed"], default="mixed")
    t.add_argument("--data-npz", type=Path, default=None, help="arrays file instead of generated data")
    t.add_argument("--faces", type=Path, default=None,
                   help="real-face caches (affect-quantize faces; docs/data.md) instead of generated data")
    t.add_argument("--vote-weight", type=float, default=0.5,
                   help="with --faces: share of the FER+ crowd votes in the expression target (the rest: the "
                        "FER2013 label)")
    t.add_argument("--clip-weights", type=Path, default=None, help="local CLIP state dict (base)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="model config override")
    t.add_argument("--threads", type=int, default=None, help="PyTorch threads per rank (default: all cores)")
    t.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=_train)

    e = tsub.add_parser("eval", help="metrics of a trained teacher (thresholds from the validation split)")
    e.add_argument("--run", type=Path, required=True, help="run directory with checkpoint.pt")
    e.add_argument("--split", choices=["val", "holdout"], default="holdout")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_eval)


def _overrides(items: list[str]) -> dict:
    from edge.cli.app import CLIError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _train(args: argparse.Namespace) -> int:
    from edge.cli.app import CLIError
    from quantize.ssm.config import ssm_config
    from quantize.train.checkpoint import CHECKPOINT
    from quantize.train.loop import TrainSettings, init_distributed, train
    from quantize.train.recipe import DataRecipe

    if args.no_resume and (args.out / CHECKPOINT).exists():
        raise CLIError(f"{args.out / CHECKPOINT} exists and --no-resume was given")
    overrides = _overrides(args.set)
    if args.clip_weights is not None:
        if not args.clip_weights.is_file():
            raise CLIError(f"--clip-weights {args.clip_weights}: no such file")
        overrides["clip_weights"] = str(args.clip_weights)
    try:
        cfg = ssm_config(args.config, **overrides)
    except ValueError as exc:
        raise CLIError(f"teacher config: {exc}") from exc
    given = {"steps": args.steps, "lr": args.lr, "val_every": args.val_every, "ckpt_every": args.ckpt_every,
             "batch_au": args.batch, "batch_fe": args.batch, "threads": args.threads}
    if args.faces is not None:
        given["single_stream"] = True  # every real face carries both kinds of label
    settings = TrainSettings(seed=args.seed, progress=not args.no_progress,
                             **{k: v for k, v in given.items() if v is not None})
    if args.faces is not None:
        source, meta = _real_source(args, cfg)
    else:
        sizes = {"n_train": args.n_train, "n_val": args.n_val, "n_holdout": args.n_holdout}
        source = DataRecipe(kind=args.data_kind, crop_size=cfg.image_size, seed=args.seed, npz=args.data_npz,
                            **{k: v for k, v in sizes.items() if v is not None})
        meta = {"recipe": source.model_dump(mode="json")}
    info = init_distributed()
    data, val = source.split("train"), source.split("val")
    if info.main:
        print(f"data: {len(data)} train faces, {len(val)} val faces ({source.describe()})")
    result = train(cfg, settings, data, args.out, val=val, resume=not args.no_resume, meta=meta)
    if info.main:
        print(f"trained {result.step} steps in {result.seconds:.0f} s")
        _final_report(result.model, source, args.out, val)
    return 0


def _real_source(args: argparse.Namespace, cfg):
    """RealData for --faces; the model must take the caches' crop (grey, at the cache's input size)."""
    from edge.cli.app import CLIError
    from quantize.data.face_cache import FaceCache
    from quantize.train.real_data import RealData

    if cfg.in_channels != 1:
        raise CLIError(f"--faces {args.faces} holds grey faces; the teacher config takes {cfg.in_channels}-channel "
                       "input (use --config real, or --set in_channels=1)")
    FaceCache.load(args.faces / "val.npz")  # fail early with a clear message
    source = RealData(faces=args.faces.resolve(), vote_weight=args.vote_weight, size=cfg.image_size)
    return source, {"real": source.model_dump(mode="json")}


def _final_report(model, source, out: Path, val) -> dict:
    import numpy as np

    from quantize.metrics import report_table
    from quantize.train.evaluate import calibrate, predict, reports

    val_pred = predict(model, val)
    thresholds = calibrate(val_pred)
    holdout = source.split("holdout")
    results, text = {}, []
    for name, pred in (("val", val_pred), ("holdout", predict(model, holdout))):
        au, fe = reports(pred, thresholds, model)
        results[name] = {"au": au, "fe": fe}
        text.append(f"== {name} ({len(pred.fe)} faces; AU thresholds calibrated on val) ==\n{report_table(au, fe)}")
    from dataclasses import asdict

    payload = {name: {k: asdict(v) if v else None for k, v in r.items()} for name, r in results.items()}
    (out / "metrics.json").write_text(json.dumps(payload, indent=2))
    (out / "metrics.txt").write_text("\n\n".join(text) + "\n")
    (out / "thresholds.json").write_text(json.dumps({"aus": list(model.cfg.aus), "threshold": thresholds.tolist(),
                                                     "calibrated_on": "val"}))
    from edge.fsutil import atomic_writer

    with atomic_writer(out / "head.npz") as handle:
        np.savez(handle, **model.export_head(au_threshold=thresholds))
    print("\n\n".join(text))
    return payload


def _eval(args: argparse.Namespace) -> int:
    from quantize.metrics import report_json, report_table
    from quantize.ssm.config import SSMConfig
    from quantize.ssm.model import SSMTeacher
    from quantize.train import checkpoint as ck
    from quantize.train.evaluate import calibrate, predict, reports
    from quantize.train.recipe import data_source

    state = ck.load(args.run / ck.CHECKPOINT)
    model = SSMTeacher(SSMConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    source = data_source(state.get("meta", {}))
    val = source.split("val")
    val_pred = predict(model, val)
    thresholds = calibrate(val_pred)
    pred = val_pred if args.split == "val" else predict(model, source.split(args.split))
    au, fe = reports(pred, thresholds, model)
    if args.json:
        print(report_json(au, fe, split=args.split, step=state["step"], thresholds_from="val"))
    else:
        print(f"{args.split}: step {state['step']}, {len(pred.fe)} faces, AU thresholds calibrated on val")
        print(report_table(au, fe))
    return 0
