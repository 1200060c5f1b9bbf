"""What moving the semantic head into the CPU graph would save per face (plan item 1, docs/performance.md).

The NumPy head is ~0.035 ms of math but costs 0.14-0.16 ms right after a graph
run. This appends the head's math (docs/head.md, constants pre-arranged: one
matmul per feature, norms, softmax, sigmoid, both prior mappings) to a bundle's
`student_cpu.onnx` as plain ONNX ops, checks the merged graph against
`edge.head.reference.head_forward` on the bundle's golden inputs, and times
graph + NumPy head step vs the merged graph at batch 1, in alternating blocks.
A prototype measurement: the daemon does not use the merged graph.

    python benchmarks/head_in_graph.py [--bundle DIR] [--threads 2] [--blocks 60]
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np


def head_graph(params, opsets, ir_version: int):
    """ONNX model f, g (B x D) -> fe_prob (B x E), au_prob (B x A): the head's probabilities."""
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper as nh

    from edge.head.reference import EPS

    f32 = np.float32
    e, a = params.n_fe, params.n_au
    scale, mix_fe, mix_au = f32(params.scale), f32(params.mix_fe), f32(params.mix_au)
    consts = {
        "w_f": np.concatenate([params.fe_weight.T, scale * params.fe_proto.T], 1),
        "w_g": np.concatenate([params.au_weight.T, scale * params.au_proto.T], 1),
        "b_f": params.fe_bias, "b_g": params.au_bias,
        "loglik": mix_fe / f32(a) * params.prior_loglik.T, "loglik_b": mix_fe / f32(a) * params.prior_bias,
        "expect": mix_au * params.prior_expect.T, "keep": np.array(1 - mix_au), "eps": np.array(EPS),
    }
    inits = [nh.from_array(np.asarray(v, f32), k) for k, v in consts.items()]
    inits += [nh.from_array(np.array([n, n], np.int64), f"split_{k}") for k, n in (("e", e), ("a", a))]
    nodes = []
    for x, w, split, bias, z in (("f", "w_f", "split_e", "b_f", "z_fe"), ("g", "w_g", "split_a", "b_g", "z_au")):
        # z = x W_lin + b + scale * (x P^T) / max(|x|, eps)
        nodes += [
            h.make_node("MatMul", [x, w], [f"{x}_mm"]),
            h.make_node("Split", [f"{x}_mm", split], [f"{x}_lin", f"{x}_proto"], axis=1),
            h.make_node("ReduceL2", [x], [f"{x}_n0"], axes=[1], keepdims=1),
            h.make_node("Max", [f"{x}_n0", "eps"], [f"{x}_n"]),
            h.make_node("Div", [f"{x}_proto", f"{x}_n"], [f"{x}_cos"]),
            h.make_node("Add", [f"{x}_lin", f"{x}_cos"], [f"{x}_z0"]),
            h.make_node("Add", [f"{x}_z0", bias], [z]),
        ]
    nodes += [
        h.make_node("Softmax", ["z_fe"], ["p_fe0"], axis=1),
        h.make_node("Sigmoid", ["z_au"], ["p_au0"]),
        h.make_node("MatMul", ["p_au0", "loglik"], ["prior_fe"]),
        h.make_node("Add", ["z_fe", "prior_fe"], ["z_fe1"]),
        h.make_node("Add", ["z_fe1", "loglik_b"], ["z_fe2"]),
        h.make_node("Softmax", ["z_fe2"], ["fe_prob"], axis=1),
        h.make_node("Mul", ["p_au0", "keep"], ["au_kept"]),
        h.make_node("MatMul", ["p_fe0", "expect"], ["prior_au"]),
        h.make_node("Add", ["au_kept", "prior_au"], ["au_prob"]),
    ]
    dim = params.dim
    graph = h.make_graph(
        nodes, "semantic_head",
        [h.make_tensor_value_info(x, TensorProto.FLOAT, ["batch", dim]) for x in ("f", "g")],
        [h.make_tensor_value_info("fe_prob", TensorProto.FLOAT, ["batch", e]),
         h.make_tensor_value_info("au_prob", TensorProto.FLOAT, ["batch", a])],
        inits,
    )
    return h.make_model(graph, opset_imports=opsets, ir_version=ir_version)


def merged_graph(bundle):
    """The bundle's CPU graph with the head appended: image -> fe_prob, au_prob."""
    import onnx

    from edge.head.params import load_head_params

    student = onnx.load(str(bundle.role("onnx_cpu")))
    head = head_graph(load_head_params(bundle.role("head")), list(student.opset_import), student.ir_version)
    return onnx.compose.merge_models(student, head, io_map=[("f", "f"), ("g", "g")], outputs=["fe_prob", "au_prob"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=None, help="bundle directory (default: the built-in one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--blocks", type=int, default=60,
                        help="alternating timed blocks (5 passes over the golden faces each)")
    args = parser.parse_args(argv)

    from edge.bundle.default import resolve_bundle
    from edge.head.fp32_bound import head_bound
    from edge.head.params import load_head_params
    from edge.head.reference import head_forward
    from edge.head.runner import NumpyHead
    from edge.head.smoothing import SmoothingSpec
    from edge.pipeline.bench import machine, machine_line, ort_session, time_rotating

    bundle = resolve_bundle(args.bundle)
    params = load_head_params(bundle.role("head"))
    graph = ort_session(bundle.role("onnx_cpu"), args.threads)
    merged = ort_session(merged_graph(bundle).SerializeToString(), args.threads)

    faces = np.load(bundle.role("golden_inputs"))
    fe, au = merged.run(None, {"image": faces})
    f, g = graph.run(["f", "g"], {"image": faces})
    ref, bound = head_forward(params, f, g), head_bound(params, f, g)
    deviation = max(float(np.abs(fe - ref.fe_prob).max()), float(np.abs(au - ref.au_prob).max()))
    # the share of docs/head.md's float32 rounding bound used, worst element: above 1 is a real disagreement
    used = max(float((np.abs(fe - ref.fe_prob) / bound.fe_prob).max()),
               float((np.abs(au - ref.au_prob) / bound.au_prob).max()))

    head = NumpyHead(params, SmoothingSpec(mode="none"))
    slots, fresh = np.zeros(1, np.int32), np.ones(1, bool)
    singles = [faces[i : i + 1] for i in range(len(faces))]
    separate_faces, merged_faces = itertools.cycle(singles), itertools.cycle(singles)

    def separate() -> None:
        head.run(*graph.run(["f", "g"], {"image": next(separate_faces)}), slots, fresh)

    def together() -> None:
        merged.run(None, {"image": next(merged_faces)})

    # each block: 5 passes over the faces per variant, the order rotating
    times = time_rotating({"separate": separate, "merged": together}, args.blocks * 5 * len(singles),
                          rounds=args.blocks)
    a, b = (float(np.median(times[k])) for k in ("separate", "merged"))
    m = bundle.manifest
    print(f"{machine_line(machine())}; {args.threads} threads, batch 1")
    print(f"bundle: {m.name} {m.version} build {m.build} ({m.input.crop_size} px)")
    print(f"merged graph vs graph + reference head, golden inputs: max |difference| {deviation:.1e}, "
          f"{used:.2g} of the float32 bound")
    print(f"per face, p50: graph + NumPy head step {a:.3f} ms; head inside the graph {b:.3f} ms; "
          f"saves {a - b:.3f} ms ({a / b:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
