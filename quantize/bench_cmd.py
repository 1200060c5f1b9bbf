"""`affect-quantize bench`: the workstation's view of a bundle, measured on this machine in one run.

- cost: parameters and multiply-accumulates (MACs) of the student graph (and of the
  teacher with `--teacher RUN`), against this machine's measured GEMM throughput
  (onnxruntime, same thread count): the floor a model of that size can reach here;
- speed: every lowering (FP32, CPU INT8, and the TensorRT Q/DQ graph run on the CPU)
  at batch 1 and 8, interleaved, and the teacher in PyTorch; INT8 vs FP32 ratios;
- the pipeline per stage with the INT8 graph and with the FP32 graph, chunks alternated;
- accuracy retention teacher -> FP32 student -> INT8 student: the manifest's metrics
  (generated holdout faces) and, measured now, real photos of unseen people (London
  holdout, smiling vs neutral) through the same detector and crops for every model.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="cost, speed and accuracy retention of a bundle (teacher -> FP32 -> INT8)")
    p.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the built-in one)")
    p.add_argument("--teacher", type=Path, default=None, help="teacher run directory (checkpoint.pt), optional")
    p.add_argument("--threads", type=int, default=2, help="threads for every model (default 2)")
    p.add_argument("--iterations", type=int, default=200, help="runs per graph and batch size (default 200)")
    p.add_argument("--frames", type=int, default=200, help="demo frames per pipeline variant (default 200)")
    p.add_argument("--london", type=Path, default=None, help="London face set (default: ../shared/data/...)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=_bench)


# ------------------------------------------------------------------ cost


def onnx_macs(path: Path, batch: int = 1) -> dict[str, Any]:
    """Parameters and MACs (Conv, ConvTranspose-free CNNs, Gemm, MatMul) of an ONNX graph at `batch`."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    for tensor in (*model.graph.input, *model.graph.output):
        dims = tensor.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    model = shape_inference.infer_shapes(model)
    shapes: dict[str, list[int]] = {}
    for info in (*model.graph.value_info, *model.graph.input, *model.graph.output):
        shapes[info.name] = [d.dim_value for d in info.type.tensor_type.shape.dim]
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for t in model.graph.initializer:
        shapes[t.name] = list(t.dims)
    params = int(sum(a.size for a in inits.values() if a.dtype.kind == "f"))
    by_op: dict[str, int] = {}
    for node in model.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        if not out:
            continue
        if node.op_type == "Conv":
            w = shapes.get(node.input[1])
            if w:
                by_op["Conv"] = by_op.get("Conv", 0) + int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0])
            if a:
                trans_a = any(at.name == "transA" and at.i for at in node.attribute)
                k = a[-2] if trans_a else a[-1]
                by_op[node.op_type] = by_op.get(node.op_type, 0) + int(np.prod(out)) * int(k)
    return {"params": params, "macs": int(sum(by_op.values())), "by_op": by_op, "batch": batch}


def torch_macs(module, x) -> int:
    """MACs of one forward pass, from PyTorch's FLOP counter (which counts 2 FLOPs per MAC)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(x)
    return int(counter.get_total_flops() // 2)


def gemm_throughput(threads: int, size: int = 1024, iterations: int = 10) -> dict[str, Any]:
    """This machine's measured GEMM throughput on onnxruntime (FP32 MatMul, INT8 MatMulInteger), `threads` threads."""
    import onnx
    from onnx import TensorProto, helper

    from edge.pipeline.bench import ort_session

    out: dict[str, Any] = {"size": size, "threads": threads}
    rng = np.random.default_rng(0)
    graphs = {
        "fp32_gflops": (helper.make_node("MatMul", ["a", "b"], ["c"]), TensorProto.FLOAT, TensorProto.FLOAT,
                        np.float32, np.float32),
        "int8_gops": (helper.make_node("MatMulInteger", ["a", "b"], ["c"]), TensorProto.UINT8, TensorProto.INT32,
                      np.uint8, np.int8),
    }
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for key, (node, in_type, out_type, a_dtype, b_dtype) in graphs.items():
            b_values = (rng.standard_normal((size, size)) * 20).astype(b_dtype)
            graph = helper.make_graph(
                [node], key, [helper.make_tensor_value_info("a", in_type, [size, size])],
                [helper.make_tensor_value_info("c", out_type, [size, size])],
                [onnx.numpy_helper.from_array(b_values, "b")])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
            path = Path(tmp) / f"{key}.onnx"
            onnx.save(model, str(path))
            session = ort_session(path, threads)
            a = (rng.random((size, size)) * (255 if a_dtype == np.uint8 else 1)).astype(a_dtype)
            for _ in range(3):
                session.run(None, {"a": a})
            samples = []
            for _ in range(iterations):
                start = time.perf_counter()
                session.run(None, {"a": a})
                samples.append(time.perf_counter() - start)
            out[key] = 2 * size**3 / float(np.median(samples)) / 1e9
    return out


# ------------------------------------------------------------------ speed


def load_teacher(run: Path):
    from quantize.distill_cmd import load_teacher as load

    teacher, _recipe = load(run)
    return teacher


class TeacherRunner:
    """The teacher as the student's drop-in: normalised image batch -> fe_prob, au_prob (prototypes cached)."""

    def __init__(self, teacher) -> None:
        import torch

        self.teacher, self.torch = teacher, torch
        with torch.no_grad():
            self.protos = teacher.prototypes()

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with self.torch.no_grad():
            f, g = self.teacher.features(self.torch.from_numpy(x))
            out = self.teacher._heads(f, g, self.protos)
            return out.fe_logits.softmax(-1).numpy(), out.au_prob[:, 0].numpy()


def bench_models(bundle, threads: int, iterations: int, teacher: TeacherRunner | None,
                 batches: tuple[int, ...] = (1, 8)) -> dict[str, Any]:
    """ms per batch for each graph (and the teacher), in rotating blocks (edge.pipeline.bench.time_rotating)."""
    from edge.pipeline.bench import ort_session, time_rotating
    from edge.pipeline.stats import summarize

    spec = bundle.manifest.input
    runners: dict[str, Any] = {}
    for role in ("onnx_fp32", "onnx_cpu", "onnx_tensorrt"):
        path = bundle.role(role)
        if path is not None:
            session = ort_session(path, threads)
            runners[role] = lambda x, s=session: s.run(None, {spec.tensor: x})
    if teacher is not None:
        runners["teacher_pytorch"] = teacher
    out: dict[str, Any] = {"threads": threads, "iterations": iterations, "batches": {}}
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.standard_normal((batch, spec.channels, spec.crop_size, spec.crop_size)).astype(np.float32)
        n = iterations if batch == 1 else max(10, iterations // 4)
        times = time_rotating({name: (lambda run=run, x=x: run(x)) for name, run in runners.items()}, n)
        table = {name: summarize(values) for name, values in times.items()}
        row: dict[str, Any] = {"ms": table}
        if {"onnx_cpu", "onnx_fp32"} <= set(table):
            row["int8_speedup_vs_fp32"] = table["onnx_fp32"]["p50"] / table["onnx_cpu"]["p50"]
        if "teacher_pytorch" in table and "onnx_cpu" in table:
            row["int8_speedup_vs_teacher"] = table["teacher_pytorch"]["p50"] / table["onnx_cpu"]["p50"]
        out["batches"][str(batch)] = row
    return out


def bench_pipelines(bundle, threads: int, frames: int, chunks: int = 4) -> dict[str, Any]:
    """The device pipeline on demo frames with the INT8 graph and with the FP32 graph, chunks alternated."""
    from edge.config import load_config
    from edge.pipeline.bench import (
        PublishProbe,
        RoleBackend,
        load_frames,
        merge_samples,
        pipeline_samples,
        summarize_pipeline,
    )
    from edge.pipeline.processor import FrameProcessor

    config = load_config(None, [f"model.threads={threads}"])
    images, render_ms = load_frames(None, frames, config.source.width, config.source.height)
    procs = {role: FrameProcessor(bundle, config, "bench", backend=RoleBackend(bundle, role, threads))
             for role in ("onnx_cpu", "onnx_fp32") if bundle.role(role) is not None}
    probes = {role: PublishProbe() for role in procs}
    parts: dict[str, list] = {role: [] for role in procs}
    size = max(1, len(images) // chunks)
    for c, start in enumerate(range(0, len(images), size)):
        order = list(procs) if c % 2 == 0 else list(procs)[::-1]
        for role in order:
            parts[role].append(pipeline_samples(procs[role], images[start : start + size], start, probes[role]))
    out = {role: summarize_pipeline(merge_samples(parts[role]), procs[role], images, render_ms,
                                    "built-in demo (frame render)") for role in procs}
    if {"onnx_cpu", "onnx_fp32"} <= set(out):
        out["fps_ratio_int8_over_fp32"] = out["onnx_cpu"]["processed_fps"] / out["onnx_fp32"]["processed_fps"]
    return out


# ------------------------------------------------------------------ accuracy on real photos


def real_photo_retention(bundle, london: Path | None, threads: int, teacher: TeacherRunner | None) -> dict[str, Any]:
    """London holdout (never trained on), smiling vs neutral, same detection and crops for every model."""
    import cv2

    from edge.alignment import align_face
    from edge.config import load_config
    from edge.head.params import load_head_params
    from edge.head.reference import head_forward
    from edge.pipeline.bench import ort_session
    from edge.runtime.preprocess import to_tensor
    from edge.tracking.frontend import FaceFrontEnd
    from quantize.data.london import LondonFaces, default_dir, london_split
    from quantize.metrics import roc_auc

    root = london or default_dir()
    if not root.is_dir():
        return {"skipped": f"no London photos at {root}"}
    spec = bundle.manifest.input
    labels = bundle.manifest.label_space
    config = load_config(None, [])
    front = FaceFrontEnd.from_config(config.detection, spec.crop_size, np.asarray(spec.alignment.points, np.float32))
    params = load_head_params(bundle.role("head"))
    models: dict[str, Any] = {}
    for role in ("onnx_fp32", "onnx_cpu", "onnx_tensorrt"):
        path = bundle.role(role)
        if path is not None:
            session = ort_session(path, threads)

            def run(x, s=session):
                f, g = s.run(["f", "g"], {spec.tensor: x})
                out = head_forward(params, f, g)
                return out.fe_prob, out.au_prob

            models[role] = run
    if teacher is not None:
        models = {"teacher_pytorch": teacher, **models}
    people = london_split(LondonFaces(root).persons()).holdout
    rows: dict[str, list[dict]] = {name: [] for name in models}
    missed = []
    happy, neutral = labels.expressions.index("happiness"), labels.expressions.index("neutral")
    au12 = list(labels.aus).index(12) if 12 in labels.aus else None
    for person in people:
        for kind, suffix in (("neutral", "03"), ("smiling", "08")):
            image = cv2.imread(str(root / f"{person}_{suffix}.jpg"), cv2.IMREAD_COLOR)
            faces = front.still_faces(image) if image is not None else []
            if not faces:
                missed.append(f"{person}_{suffix}")
                continue
            face = max(faces, key=lambda d: d.area)
            x = to_tensor([align_face(image, face.landmarks, front.template, spec.crop_size)], spec, "BGR")
            for name, run in models.items():
                fe, au = run(x)
                rows[name].append({"kind": kind, "happiness": float(fe[0, happy]), "top": int(np.argmax(fe[0])),
                                   "au12": float(au[0, au12]) if au12 is not None else float("nan")})
    out: dict[str, Any] = {"data": f"London holdout people (never trained on), {len(people)} people",
                           "missed": missed, "models": {}}
    for name, r in rows.items():
        truth = np.array([row["kind"] == "smiling" for row in r])
        smiling = [row for row in r if row["kind"] == "smiling"]
        neutrals = [row for row in r if row["kind"] == "neutral"]
        out["models"][name] = {
            "faces": len(r),
            "happiness_auc": roc_auc(np.array([row["happiness"] for row in r]), truth),
            "au12_auc": roc_auc(np.array([row["au12"] for row in r]), truth),
            "smiling_as_happiness": float(np.mean([row["top"] == happy for row in smiling])) if smiling else None,
            "neutral_as_neutral": float(np.mean([row["top"] == neutral for row in neutrals])) if neutrals else None,
        }
    return out


# ------------------------------------------------------------------ the command


def _bench(args: argparse.Namespace) -> int:
    import torch

    from edge.bundle.default import resolve_bundle
    from edge.cli.app import CLIError
    from edge.pipeline.bench import accuracy_retention, bundle_summary, machine

    if args.threads < 1 or args.iterations < 1 or args.frames < 4:
        raise CLIError("--threads and --iterations must be at least 1, --frames at least 4")
    torch.set_num_threads(args.threads)
    bundle = resolve_bundle(args.bundle)
    teacher = None
    cost: dict[str, Any] = {}
    fp32 = bundle.role("onnx_fp32") or bundle.role("onnx_cpu")
    if fp32 is not None:
        cost["student"] = onnx_macs(fp32)
    if args.teacher is not None:
        if not (args.teacher / "checkpoint.pt").is_file():
            raise CLIError(f"{args.teacher}: no checkpoint.pt (a teacher run directory is expected)")
        model = load_teacher(args.teacher)
        teacher = TeacherRunner(model)
        spec = bundle.manifest.input
        x = torch.zeros(1, spec.channels, spec.crop_size, spec.crop_size)
        cost["teacher"] = {"params": int(sum(p.numel() for p in model.parameters())),
                           "macs": torch_macs(lambda t: model.features(t), x), "batch": 1,
                           "run": str(args.teacher)}
    results: dict[str, Any] = {
        "machine": machine(),
        "bundle": bundle_summary(bundle),
        "threads": args.threads,
        "cost": cost,
        "throughput": gemm_throughput(args.threads),
        "speed": bench_models(bundle, args.threads, args.iterations, teacher),
        "pipeline": bench_pipelines(bundle, args.threads, args.frames),
        "accuracy": {"manifest": accuracy_retention(bundle.manifest),
                     "real_photos": real_photo_retention(bundle, args.london, args.threads, teacher)},
    }
    results["floor"] = _floor(results)
    print(json.dumps(results, indent=2) if args.json else render(results))
    return 0


def _floor(r: dict[str, Any]) -> dict[str, Any]:
    """The compute floor: student MACs at the machine's measured GEMM rate, vs the measured batch-1 latency."""
    student = r["cost"].get("student")
    if not student:
        return {}
    thr, speed = r["throughput"], r["speed"]["batches"]["1"]["ms"]
    flops = 2 * student["macs"]
    out = {"student_gflop": flops / 1e9,
           "fp32_floor_ms": flops / (thr["fp32_gflops"] * 1e9) * 1e3,
           "int8_floor_ms": flops / (thr["int8_gops"] * 1e9) * 1e3}
    if "onnx_fp32" in speed:
        out["fp32_achieved_gflops"] = flops / (speed["onnx_fp32"]["p50"] / 1e3) / 1e9
    if "onnx_cpu" in speed:
        out["int8_achieved_gops"] = flops / (speed["onnx_cpu"]["p50"] / 1e3) / 1e9
    return out


def render(r: dict[str, Any]) -> str:
    from edge.pipeline.bench import machine_line, retention_table, size_table

    b = r["bundle"]
    lines = [machine_line(r["machine"]),
             f"bundle: {b['name']} {b['version']} (build {b['build']}, created {b['created']}) at {b['path']}; "
             f"{r['threads']} threads for every model", ""]
    lines.append("cost (batch 1):")
    for name, c in r["cost"].items():
        lines.append(f"  {name:<10}{c['params'] / 1e6:>8.3f} M params {c['macs'] / 1e6:>10.1f} M MACs")
    t, fl = r["throughput"], r["floor"]
    lines.append(f"  this machine, onnxruntime {t['size']}^3 GEMM on {t['threads']} threads: FP32 "
                 f"{t['fp32_gflops']:.1f} GFLOP/s, INT8 {t['int8_gops']:.1f} GOP/s")
    if fl:
        lines.append(f"  student at those rates: FP32 {fl['fp32_floor_ms']:.3f} ms, INT8 {fl['int8_floor_ms']:.3f} ms "
                     f"per face; achieved FP32 {fl.get('fp32_achieved_gflops', float('nan')):.1f} GFLOP/s, "
                     f"INT8 {fl.get('int8_achieved_gops', float('nan')):.1f} GOP/s")
    lines += ["", "speed, ms per batch (rotating blocks; p50 [p95]):"]
    names = list(next(iter(r["speed"]["batches"].values()))["ms"])
    lines.append(f"  {'batch':<7}" + "".join(f"{n:>22}" for n in names) + f"{'INT8/FP32':>11}")
    for batch, row in r["speed"]["batches"].items():
        cells = "".join(f"{row['ms'][n]['p50']:>13.3f} [{row['ms'][n]['p95']:>6.2f}]" for n in names)
        ratio = row.get("int8_speedup_vs_fp32")
        lines.append(f"  {batch:<7}{cells}{(f'{ratio:.2f}x' if ratio else '-'):>11}")
        if "int8_speedup_vs_teacher" in row:
            lines.append(f"  {'':7}INT8 student vs teacher: {row['int8_speedup_vs_teacher']:.1f}x faster")
    p = r["pipeline"]
    roles = [k for k in ("onnx_cpu", "onnx_fp32") if k in p]
    if roles:
        first = p[roles[0]]
        lines += ["", f"pipeline per stage, p50 ms ({first['frames']} demo frames {first['size']} per graph, "
                      f"chunks alternated; detector every {first['detector_every_k_frames']} frames):",
                  f"  {'stage':<10}" + "".join(f"{role:>14}" for role in roles)]
        for stage in first["stages_ms"]:
            lines.append(f"  {stage:<10}" + "".join(f"{p[role]['stages_ms'][stage]['p50']:>14.3f}" for role in roles))
        lines.append(f"  {'frame':<10}" + "".join(f"{p[role]['frame_ms']['p50']:>14.3f}" for role in roles))
        lines.append(f"  {'fps':<10}" + "".join(f"{p[role]['processed_fps']:>14.1f}" for role in roles))
        if "fps_ratio_int8_over_fp32" in p:
            lines.append(f"  processed fps INT8 / FP32: {p['fps_ratio_int8_over_fp32']:.2f}x; RSS "
                         f"{p[roles[0]]['rss_mb']:.0f} MB (peak {p[roles[0]]['peak_rss_mb']:.0f} MB)")
    lines += ["", f"model sizes (bundle total {b['total_bytes'] / 2**20:.2f} MB):", *size_table(b), "",
              "accuracy retention, teacher -> FP32 student -> INT8 student (manifest):",
              *retention_table(r["accuracy"]["manifest"])]
    real = r["accuracy"]["real_photos"]
    if "models" in real:
        lines += ["", f"accuracy on real photos, measured now: {real['data']}, smiling vs neutral "
                      f"(missed: {', '.join(real['missed']) or 'none'}):",
                  f"  {'model':<18}{'faces':>6}{'happiness AUC':>15}{'AU12 AUC':>10}{'smiling->happy':>16}"
                  f"{'neutral->neutral':>18}"]
        for name, m in real["models"].items():
            lines.append(f"  {name:<18}{m['faces']:>6}{m['happiness_auc']:>15.3f}{m['au12_auc']:>10.3f}"
                         f"{m['smiling_as_happiness']:>16.1%}{m['neutral_as_neutral']:>18.1%}")
    elif "skipped" in real:
        lines += ["", f"accuracy on real photos: skipped ({real['skipped']})"]
    return "\n".join(lines)
