"""The swappable half of the pipeline: everything bound to one bundle (backend, head runner, smoothing state).

Lifecycle: construct (opens the backend, picks the head runner) -> `selftest()`
-> `run(...)` per frame -> `close()`, which frees the backend and, on a GPU,
the engine, buffers, stream and context. A hot swap builds and self-tests a new
runtime beside the running one, hands it the smoothing state when the label
space and layout match (`smoothing` / `adopt`), then closes the old one.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from edge.bundle import Bundle
from edge.bundle.manifest import InputSpec
from edge.config.models import SensorConfig
from edge.head.params import HeadParams, load_head_params
from edge.head.runner import HeadBatch, HeadRunner, select_head
from edge.head.smoothing import SmoothingSpec
from edge.labels import LabelSpace
from edge.publish.payloads import BundleRef
from edge.runtime.backend import Backend
from edge.runtime.preprocess import to_tensor
from edge.runtime.select import open_backend
from edge.runtime.selftest import SelfTestResult, run_selftest
from edge.runtime.steps import FusedGpuStep, HostStep, StepTimes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmoothingCarry:
    """A runtime's smoothing state with what it means: carried across a swap only into the same meaning."""

    labels: LabelSpace
    spec: SmoothingSpec
    values: np.ndarray
    counters: np.ndarray

    def fits(self, labels: LabelSpace, spec: SmoothingSpec) -> str | None:
        """None if the state can be adopted; else why not."""
        if (labels.aus, labels.expressions) != (self.labels.aus, self.labels.expressions):
            return "the label space changed"
        if (spec.mode, spec.depth, spec.max_tracks) != (self.spec.mode, self.spec.depth, self.spec.max_tracks):
            return "the smoothing layout changed (head.smoothing, window or max_tracks)"
        return None


class ModelRuntime:
    """Backend + head runner + smoothing state for one bundle. Raises ValueError/OSError for a bad bundle."""

    def __init__(self, bundle: Bundle, config: SensorConfig, backend: Backend | None = None,
                 head: HeadRunner | None = None) -> None:
        self.bundle, self.config = bundle, config
        manifest = bundle.manifest
        self.labels: LabelSpace = manifest.label_space
        self.input_spec: InputSpec = manifest.input
        self.batch_max = config.model.batch_max
        self.spec = SmoothingSpec.from_config(config.head)
        self.params = self._params(bundle)
        self.head_skipped: dict[str, str] = {}
        self.backend: Backend | None = None
        self.head: HeadRunner | None = None
        self.step: HostStep | FusedGpuStep | None = None
        try:
            self.backend = backend if backend is not None else open_backend(bundle, config.model)
            session = getattr(self.backend, "cuda_session", None)  # TensorRT: features stay on the GPU
            if head is None:
                chosen = select_head(self.params, self.spec, config.head.backend, session, config.head.kernel_dir)
                head, self.head_skipped = chosen.runner, chosen.skipped
                for name, why in chosen.skipped.items():
                    log.info("head: %s not used (%s); running the %s head", name, why, chosen.backend)
            self.head = head
            fused = session is not None and getattr(head, "session", None) is session
            self.step = FusedGpuStep(self.backend, head) if fused else HostStep(self.backend, head)  # type: ignore[arg-type]
        except BaseException:
            self.close()
            raise

    def _params(self, bundle: Bundle) -> HeadParams:
        head_file = bundle.role("head")
        if head_file is None:
            raise ValueError(f"bundle {bundle.path} has no head file")
        params = load_head_params(head_file)
        if (params.n_au, params.n_fe) != (len(self.labels.aus), len(self.labels.expressions)):
            raise ValueError(f"bundle {bundle.path}: head file sizes do not match the manifest's label spaces")
        if params.dim != bundle.manifest.output.feature_dim:
            raise ValueError(f"bundle {bundle.path}: head file takes {params.dim}-d features, the graph gives "
                             f"{bundle.manifest.output.feature_dim} (manifest output.feature_dim)")
        return params

    # ------------------------------------------------------------------ running

    @property
    def role(self) -> str:
        return self.backend.role if self.backend is not None else "closed"

    @property
    def head_backend(self) -> str:
        return self.head.backend if self.head is not None else "closed"

    @property
    def fused(self) -> bool:
        return bool(getattr(self.step, "fused", False))

    @property
    def bundle_ref(self) -> BundleRef:
        m = self.bundle.manifest
        return BundleRef(name=m.name, version=m.version, build=m.build)

    def run(self, crops: list[np.ndarray], slots: np.ndarray, fresh: np.ndarray,
            times: StepTimes | None = None) -> HeadBatch:
        """Aligned BGR crops (one per face, in slot order) -> smoothed outputs, in batches of model.batch_max."""
        times = times if times is not None else StepTimes()
        parts = []
        for i in range(0, len(crops), self.batch_max):
            t0 = time.perf_counter()
            x = to_tensor(crops[i : i + self.batch_max], self.input_spec, "BGR")
            times.infer_ms += (time.perf_counter() - t0) * 1e3  # preprocessing counts as inference, as before
            parts.append(self._step(x, slots[i : i + self.batch_max], fresh[i : i + self.batch_max], times))
        return _concat(parts)

    def run_tensor(self, images: np.ndarray, slots: np.ndarray, fresh: np.ndarray) -> HeadBatch:
        """Normalised N x C x H x W tensors -> outputs (the self-test's entry: the same step as `run`)."""
        times = StepTimes()
        return _concat([self._step(images[i : i + self.batch_max], slots[i : i + self.batch_max],
                                   fresh[i : i + self.batch_max], times)
                        for i in range(0, len(images), self.batch_max)])

    def _step(self, x: np.ndarray, slots: np.ndarray, fresh: np.ndarray, times: StepTimes) -> HeadBatch:
        if self.step is None:
            raise RuntimeError("this model runtime is closed")
        return self.step.run(x, np.asarray(slots, np.int32), np.asarray(fresh, bool), times)

    def selftest(self) -> SelfTestResult:
        return run_selftest(self.bundle, self)

    # ------------------------------------------------------------------ swaps

    def smoothing(self) -> SmoothingCarry:
        assert self.head is not None
        values, counters = self.head.state()
        return SmoothingCarry(self.labels, self.spec, values, counters)

    def adopt(self, carry: SmoothingCarry) -> str | None:
        """Take over `carry` if it fits; returns None when adopted, else why not (this runtime starts clean)."""
        why = carry.fits(self.labels, self.spec)
        if why is None:
            assert self.head is not None
            self.head.load_state(carry.values, carry.counters)
        return why

    def describe(self) -> str:
        backend = self.backend.describe() if self.backend is not None else "closed"
        return f"{backend}, {self.head_backend} head{' (fused on the GPU)' if self.fused else ''}"

    def close(self) -> None:
        """Free the step, head and backend (engine, GPU buffers, stream, context); safe to call twice."""
        for part in (self.step, self.head, self.backend):
            close = getattr(part, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # a failing teardown must not hide the next one
                    log.warning("closing %s failed: %s", type(part).__name__, exc)
        self.step = self.head = self.backend = None


def _concat(parts: list[HeadBatch]) -> HeadBatch:
    if len(parts) == 1:
        return parts[0]
    if not parts:
        raise ValueError("no faces to run")
    return HeadBatch(*(np.concatenate([getattr(p, k) for p in parts]) for k in
                       ("fe_prob", "au_prob", "au_active", "top_expression")))
