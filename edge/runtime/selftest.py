"""The golden self-test: a bundle must reproduce its own golden outputs on this device's backend.

Run at start and before a fleet update is activated: it catches a wrong or
corrupt graph, a broken engine build and a mismatched head file, on the real
backend rather than on the machine that exported the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.bundle import Bundle, BundleError
from edge.head.params import load_head_params
from edge.head.reference import head_forward
from edge.runtime.backend import Backend


@dataclass(frozen=True)
class SelfTestResult:
    role: str
    faces: int
    max_abs_error: float
    atol: float

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.atol

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"self-test {verdict}: {self.faces} golden faces on {self.role}, "
                f"max |error| {self.max_abs_error:.2e} (tolerance {self.atol:.2e})")


def run_selftest(bundle: Bundle, backend: Backend) -> SelfTestResult:
    golden = bundle.manifest.golden
    if golden is None:
        raise BundleError(bundle.path, "manifest.json: golden", "bundle has no golden vectors to self-test with")
    atol = golden.atol.get(backend.role)  # type: ignore[call-overload]
    if atol is None:
        raise BundleError(bundle.path, "manifest.json: golden.atol", f"no tolerance for {backend.role}")
    inputs = np.load(bundle.file(golden.inputs), allow_pickle=False)
    with np.load(bundle.file(golden.outputs), allow_pickle=False) as expected:
        want = {k: expected[k] for k in ("fe_prob", "au_prob")}
    head = load_head_params(bundle.role("head") or bundle.path / "head.npz")
    features = backend.infer(inputs)
    got = head_forward(head, features.f, features.g)
    error = max(float(np.abs(got.fe_prob - want["fe_prob"]).max()), float(np.abs(got.au_prob - want["au_prob"]).max()))
    return SelfTestResult(backend.role, len(inputs), error, atol)
