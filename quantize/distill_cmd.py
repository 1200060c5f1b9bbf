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
    d.add_argument("--seed", type=int, default=0)
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

    r = sub.add_parser("recipe", help="documented, seeded end-to-end recipes")
    r.add_argument("name", choices=["default"], help="default: the bundle shipped inside the package")
    r.add_argument("--work", type=Path, default=Path("runs/default"), help="run directories (resumable)")
    r.add_argument("--out", type=Path, default=None, help="bundle output (default: edge/models/default)")
    r.add_argument("--no-progress", action="store_true")
    r.set_defaults(func=_recipe)


def load_teacher(run: Path):
    from quantize.ssm.config import SSMConfig
    from quantize.ssm.model import SSMTeacher
    from quantize.train import checkpoint as ck
    from quantize.train.recipe import DataRecipe

    state = ck.load(run / ck.CHECKPOINT)
    teacher = SSMTeacher(SSMConfig(**state["model_config"]))
    teacher.load_state_dict(state["model"])
    teacher.eval()
    return teacher, DataRecipe(**state.get("meta", {}).get("recipe", {}))


def _distill(args: argparse.Namespace) -> int:
    from quantize.distill.loop import DistillSettings

    given = {"fp32_steps": args.fp32_steps, "qat_steps": args.qat_steps, "batch": args.batch,
             "crop_size": args.crop_size}
    settings = DistillSettings(seed=args.seed, progress=not args.no_progress,
                               **{k: v for k, v in given.items() if v is not None})
    run_distill(args.teacher, args.out, settings)
    return 0


def run_distill(teacher_run: Path, out: Path, settings) -> dict:
    """Both phases plus the comparison table on person-disjoint holdout data (thresholds from val)."""
    from quantize.distill.loop import calibrate_student, distill, evaluate, summary
    from quantize.train.recipe import build_split

    teacher, recipe = load_teacher(teacher_run)
    out.mkdir(parents=True, exist_ok=True)
    (out / DISTILL_SETTINGS).write_text(json.dumps({"teacher": str(teacher_run.resolve()),
                                                    "settings": settings.model_dump(mode="json")}, indent=2))
    train, val, holdout = (build_split(recipe, s) for s in ("train", "val", "holdout"))
    labels = teacher.cfg.labels
    started = time.monotonic()
    fp32 = distill(teacher, train, settings.model_copy(update={"qat_steps": 0}), out)
    calibrate_student(fp32, val, settings)  # each student gets its own validation-fitted logit offsets
    rows = {"teacher": evaluate(teacher, val, holdout, labels), "student_fp32": evaluate(fp32, val, holdout, labels)}
    int8 = distill(teacher, train, settings, out)
    offsets = calibrate_student(int8, val, settings)
    rows["student_int8_qat"] = evaluate(int8, val, holdout, labels)
    table, metrics = summary(rows)
    print(f"\nholdout: {len(holdout)} faces of people never trained on; AU thresholds calibrated on val\n{table}")
    print("expression logit offsets fitted on val (INT8 student): "
          + ", ".join(f"{e} {o:+.2f}" for e, o in zip(labels.expressions, offsets, strict=True)))
    result = {"metrics": metrics, "thresholds": rows["student_int8_qat"].thresholds.tolist(),
              "fe_logit_offsets": offsets.tolist(),
              "seconds": time.monotonic() - started, "data": recipe.model_dump(mode="json"),
              "holdout_faces": len(holdout)}
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


def export_run(run: Path, out: Path, name: str, version: str, build: int, overwrite: bool = False) -> None:
    import numpy as np

    from edge.alignment import template_for
    from edge.bundle import read_bundle
    from quantize.data.torch_data import IMAGE_MEAN, IMAGE_STD, normalise
    from quantize.distill.student_ssm import student_input
    from quantize.export.bundle_export import ExportSpec, export_bundle
    from quantize.train.recipe import build_split

    student, teacher, recipe = load_student(run)
    result = json.loads((run / "distill_metrics.json").read_text())
    train, holdout = build_split(recipe, "train"), build_split(recipe, "holdout")
    rng = np.random.default_rng(0)
    crop = student.backbone.config.crop_size
    picked = rng.choice(len(train), min(256, len(train)), replace=False)
    calibration = student_input(normalise(train.images[picked]), crop).numpy()
    golden = student_input(normalise(holdout.images[:8]), crop).numpy()
    data = result["data"]
    settings = json.loads((run / DISTILL_SETTINGS).read_text())["settings"]
    share = settings.get("photo_fraction", 0.0)
    photo_share = f"{share:.0%} of each distillation batch" if share else "sampled like the generated faces"
    spec = ExportSpec(
        name=name, version=version, build=build, labels=teacher.cfg.labels, crop_size=crop,
        mean=list(IMAGE_MEAN), std=list(IMAGE_STD), alignment=template_for(crop).tolist(),
        description="SSM teacher distilled with QAT into an INT8 CNN student (affect-sensor)",
        training_data=(
            f"generated faces only ({data['kind']}: AU-driven warps of London Face Research Lab neutral photos "
            f"(CC BY 4.0) and procedural faces, n_train={data['n_train']}) plus the real London neutral/smiling "
            f"photos of training people ({photo_share}); NOT trained on FACS-coded data; people in "
            "validation/holdout never trained on; expression logit offsets and AU thresholds fitted on the "
            "validation people only"
        ),
        metrics=[{**m, "data": f"generated holdout faces of unseen people (n={result['holdout_faces']}), "
                                 "AU thresholds calibrated on the validation split"} for m in result["metrics"]],
    )
    export_bundle(student.backbone, student.export_head(np.asarray(result["thresholds"])), spec, calibration,
                  golden, out, overwrite=overwrite)
    bundle = read_bundle(out)
    size = sum(e.size for e in bundle.manifest.files.values())
    print(f"wrote bundle {out}: {name} {version} build {build}, {len(bundle.manifest.files)} files, {size:,d} bytes")


def check_resumable(distill_run: Path, settings) -> None:
    """Resuming a distillation run is fine; continuing one made with other settings is not."""
    saved = distill_run / DISTILL_SETTINGS
    if not saved.is_file():
        return
    # parsed, so a field added since that run was made compares as its default
    old = {k: v for k, v in type(settings)(**json.loads(saved.read_text())["settings"]).model_dump(mode="json").items()
           if k != "progress"}
    new = {k: v for k, v in settings.model_dump(mode="json").items() if k != "progress"}
    if old != new:
        from edge.cli.app import CLIError

        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise CLIError(f"{distill_run} was made with other distillation settings ({', '.join(changed)}); "
                       "delete it or pass another --work")


def _recipe(args: argparse.Namespace) -> int:
    """The default bundle: tiny teacher -> distill + QAT -> export, seeded; see docs/recipe.md."""
    import subprocess
    import sys

    from edge.bundle.default import DEFAULT_BUNDLE_DIR
    from quantize.distill.loop import DistillSettings

    out = args.out or DEFAULT_BUNDLE_DIR
    teacher_run, distill_run = args.work / "teacher", args.work / "distill"
    started = time.monotonic()
    check_resumable(distill_run, DistillSettings(seed=0, progress=not args.no_progress))  # fail fast
    cmd = [sys.executable, "-m", "quantize.cli", "teacher", "train", "--config", "tiny", "--out", str(teacher_run),
           "--seed", "0", "--data-kind", "mixed"]
    if args.no_progress:
        cmd.append("--no-progress")
    print("recipe default: 1/3 teacher:", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    print("recipe default: 2/3 distill + QAT", flush=True)
    settings = DistillSettings(seed=0, progress=not args.no_progress)
    if not (distill_run / "distill_metrics.json").is_file():
        run_distill(teacher_run, distill_run, settings)
    print("recipe default: 3/3 export", flush=True)
    from edge import __version__

    export_run(distill_run, out, "affect-default", __version__, 1, overwrite=True)
    print(f"recipe default: done in {(time.monotonic() - started) / 60:.1f} min")
    return 0
