"""onnxruntime backend: the CPU INT8 lowering on CPUs, the float graph on the CUDA provider."""

from __future__ import annotations

import numpy as np

from edge.bundle import Bundle
from edge.runtime.backend import BackendError, Features


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, bundle: Bundle, threads: int = 2, use_cuda: bool | None = None, spin_wait: bool = True) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        cuda = "CUDAExecutionProvider" in available if use_cuda is None else use_cuda
        if cuda and "CUDAExecutionProvider" not in available:
            raise BackendError("onnxruntime here has no CUDAExecutionProvider (install onnxruntime-gpu)")
        # The CPU INT8 graph is only fast on the CPU provider; on CUDA the float graph is the right one.
        self.role = "onnx_fp32" if cuda else "onnx_cpu"
        path = bundle.role(self.role) or bundle.role("onnx_fp32")
        if path is None:
            raise BackendError(f"bundle {bundle.path} has no {self.role} or onnx_fp32 graph")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        self.session = _session(ort, path, threads, spin_wait, providers)
        # One face is too little work to share: a second thread costs more to wake than it saves (the 48 px
        # student, 2 vs 1 thread: 0.21 vs 0.19 ms at batch 1, 0.91 vs 1.26 ms at batch 8; docs/performance.md).
        # So a one-thread session of the same graph serves single faces; it has no worker pool of its own.
        self.single = (_session(ort, path, 1, spin_wait, providers) if threads > 1 and not cuda
                       else self.session)
        self.input_name = self.session.get_inputs()[0].name
        self.path, self.threads, self.spin_wait = path, threads, spin_wait

    def infer(self, images: np.ndarray) -> Features:
        session = self.single if len(images) == 1 else self.session
        f, g = session.run(["f", "g"], {self.input_name: images.astype(np.float32, copy=False)})
        return Features(f, g)

    def close(self) -> None:
        # onnxruntime frees a session (and its thread pool) with the last reference
        self.session = self.single = None

    def describe(self) -> str:
        providers = ",".join(self.session.get_providers())
        spin = "spinning" if self.spin_wait else "no spinning"
        single = ", 1 for a single face" if self.single is not self.session else ""
        return f"onnxruntime {self.path.name} ({providers}, {self.threads} threads{single}, {spin})"


def _session(ort, path, threads: int, spin_wait: bool, providers: list[str]):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Worker threads that busy-wait between runs burn a core at a camera's rate (model.spin_wait)
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin_wait else "0")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise BackendError(f"onnxruntime cannot load {path}: {exc}") from exc
