"""The real-face pipeline: aligned crop caches, camera augmentation, MediaPipe AU targets, training arrays."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edge.detection import BlazeFaceDetector
from edge.labels import BASIC_EXPRESSIONS, DEFAULT_LABELS
from quantize.data.blendshapes import AU_SOURCES, BlendshapeScores, au_targets, fit_baselines, raw_au
from quantize.data.camera_augment import CameraAugment
from quantize.data.face_cache import CropGeometry, FaceCache, build_face_cache, face_finder
from quantize.data.london import photo_images
from quantize.data.peer_targets import PeerTargets
from quantize.data.types import DataError, LabelledImage
from quantize.train.losses import fe_ce
from quantize.train.real_data import RealData, VoteMix, load_faces
from quantize.train.tensors import make_batch

LONDON = Path(__file__).resolve().parents[2] / "shared" / "data" / "london_faces"
AUS = DEFAULT_LABELS.aus
NAMES = ("_neutral", *sorted({n for names in AU_SOURCES.values() for n in names}))


def _london(persons: list[str]) -> list[LabelledImage]:
    if not LONDON.is_dir():
        pytest.skip(f"{LONDON} is not present")
    return photo_images(persons, LONDON)


def _tight(item: LabelledImage, detector) -> LabelledImage:
    """The London photo cut like FER2013: a 48 px grey crop of the face box, no margin."""
    image = item.read()
    (face,) = detector.detect(image)
    x1, y1, x2, y2 = face.box.astype(int)
    crop = cv2.resize(cv2.cvtColor(image[y1:y2, x1:x2], cv2.COLOR_BGR2GRAY), (48, 48), interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
    return LabelledImage(f"tight/{item.key}", lambda: bgr, item.expression, "tightset", item.person, tight=True)


@pytest.fixture(scope="module")
def cache() -> tuple[FaceCache, dict[str, int]]:
    detector = BlazeFaceDetector()
    photos = _london(["001", "002", "003", "004"])
    blank = np.full((48, 48, 3), 90, np.uint8)
    items = [*photos, *(_tight(p, detector) for p in photos),
             LabelledImage("tight/blank", lambda: blank, 0, "tightset", tight=True),  # no face: median placement
             LabelledImage("wide/blank", lambda: np.full((300, 300, 3), 90, np.uint8), 0, "wideset")]  # dropped
    return build_face_cache(items, CropGeometry(64, 8), progress=False)  # the device's default front end


def test_real_photos_are_aligned_by_the_device_detector(cache) -> None:
    faces, counts = cache
    assert counts == {"detector": 16, "median": 1, "dropped": 1}
    assert faces.images.shape == (17, 80, 80) and faces.images.dtype == np.uint8
    assert list(faces.aligned_by).count("median") == 1 and "wide/blank" not in faces.key
    # re-detecting the centre of an aligned crop finds the eyes on the template (the alignment is real)
    template = CropGeometry(64, 8).template()
    detector = BlazeFaceDetector()
    for i in np.flatnonzero(faces.dataset == "london_photo"):
        big = cv2.resize(cv2.cvtColor(faces.images[i], cv2.COLOR_GRAY2BGR), (320, 320), interpolation=cv2.INTER_CUBIC)
        (face,) = detector.detect(cv2.copyMakeBorder(big, 80, 80, 80, 80, cv2.BORDER_REPLICATE))
        eyes = (face.landmarks[:2] - 80) / 4
        assert np.abs(eyes - template[:2]).max() < 3.0, faces.key[i]


def test_both_face_finders_find_a_london_face_and_a_wrong_name_is_refused() -> None:
    photo = _london(["001"])[0]
    image = photo.read()
    for name in ("device", "short-whole"):  # the default, and what bundle builds 2-4 were cached with
        (face,) = face_finder(name)(image)
        assert face.score >= 0.5 and face.height > 100, name
    with pytest.raises(ValueError, match="short-whole"):
        face_finder("haar")


def test_cache_round_trip_and_labels(cache, tmp_path) -> None:
    faces, _ = cache
    path = tmp_path / "c.npz"
    faces.save(path)
    back = FaceCache.load(path)
    assert np.array_equal(back.images, faces.images) and list(back.key) == list(faces.key)
    assert (back.size, back.margin) == (64, 8)
    smiling = back.key == "001_08.jpg"
    assert back.expression[smiling][0] == BASIC_EXPRESSIONS.index("happiness")
    assert back.au[smiling][0][AUS.index(12)] == 1 and not back.au_mask[smiling][0][AUS.index(25)]
    with pytest.raises(ValueError, match="lacks arrays"):
        np.savez(tmp_path / "bad.npz", images=back.images)
        FaceCache.load(tmp_path / "bad.npz")


def test_camera_augmentation_repeats_and_changes_the_face(cache) -> None:
    faces, _ = cache
    aug = CameraAugment()
    a = [aug(faces.images[0], 64, np.random.default_rng(5)) for _ in range(2)]
    assert np.array_equal(a[0], a[1]) and a[0].shape == (64, 64) and a[0].dtype == np.uint8
    outs = np.stack([aug(faces.images[0], 64, np.random.default_rng(s)) for s in range(20)]).astype(float)
    centre = faces.images[0, 8:72, 8:72].astype(float)
    assert np.mean([np.abs(o - centre).mean() for o in outs]) > 5  # it does something
    plain = CameraAugment(flip=0, roll_deg=0, scale=0, shift=0, aspect=0, pose_p=0, low_res_p=0, blur_p=0,
                          exposure_p=0, noise_p=0, jpeg_p=0, occlude_p=0)
    np.testing.assert_allclose(plain(faces.images[0], 64, np.random.default_rng(0)), centre, atol=1)  # identity


def test_true_aspect_twin_replays_every_draw_but_the_aspect(cache) -> None:
    faces, _ = cache
    crop = faces.images[0]
    for seed in range(6):
        rng = np.random.default_rng(seed)
        shown, true_aspect = CameraAugment().with_true_aspect(crop, 64, rng)
        after = rng.random()
        ref = np.random.default_rng(seed)
        assert np.array_equal(shown, CameraAugment()(crop, 64, ref))  # the student's input is unchanged
        assert after == ref.random()  # and so is every later draw
        # the twin is exactly the same augmentation drawn with no aspect change
        assert np.array_equal(true_aspect, CameraAugment(aspect=0.0)(crop, 64, np.random.default_rng(seed)))
    squeezed, true_aspect = CameraAugment(aspect=0.25).with_true_aspect(crop, 64, np.random.default_rng(1))
    assert np.abs(squeezed.astype(float) - true_aspect).mean() > 1  # the aspect draw does change the face


def _scores(values: dict[str, np.ndarray], n: int, gap: np.ndarray) -> BlendshapeScores:
    scores = np.zeros((n, len(NAMES)), np.float32)
    for name, v in values.items():
        scores[:, NAMES.index(name)] = v
    return BlendshapeScores(np.array([f"k{i}" for i in range(n)]), NAMES, scores, gap.astype(np.float32))


def test_blendshapes_map_to_au_targets_rebased_on_neutral_faces() -> None:
    n = 40
    smile = np.r_[np.full(20, 0.1), np.full(20, 0.9)]
    scores = _scores({"mouthSmileLeft": smile, "mouthSmileRight": smile, "eyeSquintLeft": np.full(n, 0.3),
                      "eyeSquintRight": np.full(n, 0.3), "jawOpen": np.linspace(0, 1, n)}, n,
                     np.r_[np.full(20, 0.0), np.full(20, 0.3)])
    scores.scores[3] = np.nan  # no face found there
    values, labelled = raw_au(scores)
    assert not labelled[AUS.index(23)] and labelled[AUS.index(25)] and labelled.sum() == len(AUS) - 1
    baselines = fit_baselines(values, np.r_[np.ones(20, bool), np.zeros(20, bool)])
    target, mask = au_targets(values, labelled, baselines)
    au12, au7, au25 = AUS.index(12), AUS.index(7), AUS.index(25)
    assert np.allclose(target[:20, au12][mask[:20, au12]], 0) and np.allclose(target[20:, au12], (0.9 - 0.1) / 0.9)
    assert np.allclose(target[mask[:, au7], au7], 0)  # a neutral face's squint level is the baseline
    assert np.allclose(target[20:, au25], 1.0) and np.allclose(target[:20, au25][mask[:20, au25]], 0.0)
    assert not mask[3].any() and not mask[:, AUS.index(23)].any()


def test_lips_parted_stays_teachable_when_neutral_faces_part_their_lips_a_little() -> None:
    """Measured on FER2013 Training: a tenth of the neutral faces have a lip gap above 0.1 eye distances. With
    the gap saturating at 0.08 the neutral baseline reached 1 and every AU25 target was 0."""
    n = 100
    gap = np.r_[np.linspace(0.0, 0.12, 50), np.full(50, 0.3)]  # neutral faces up to 0.12, then mouths wide open
    values, labelled = raw_au(_scores({}, n, gap))
    baselines = fit_baselines(values, np.r_[np.ones(50, bool), np.zeros(50, bool)])
    au25 = AUS.index(25)
    assert baselines[au25] < 0.5
    target, mask = au_targets(values, labelled, baselines)
    assert mask[:, au25].all() and np.allclose(target[50:, au25], 1.0) and target[:45, au25].max() < 0.3


def test_training_arrays_mix_votes_and_teach_aus(cache, tmp_path) -> None:
    faces, _ = cache
    faces = faces.subset(np.arange(len(faces)))
    faces.votes[:] = 0
    faces.votes[0, BASIC_EXPRESSIONS.index("neutral")] = 6
    faces.votes[0, BASIC_EXPRESSIONS.index("sadness")] = 4
    tight_neutral = (faces.dataset == "tightset") & (faces.expression == 0)
    faces.votes[tight_neutral, 0] = 9  # clearly neutral crowd votes: these fit the AU baselines
    faces.au_mask[faces.dataset == "tightset"] = False  # like FER2013: no AU labels of their own
    for split in ("train", "val"):
        faces.save(tmp_path / f"{split}.npz")
        n = len(faces)
        neutral = (faces.expression == 0).astype(float)
        s = _scores({"mouthSmileLeft": 0.9 - 0.8 * neutral, "mouthSmileRight": 0.9 - 0.8 * neutral}, n,
                    np.zeros(n))
        BlendshapeScores(faces.key, s.names, s.scores, s.lip_gap).save(tmp_path / f"{split}.blendshapes.npz")
    mix = VoteMix(0.5).targets(faces.expression, faces.votes)
    assert np.allclose(mix[0], [0.8, 0, 0.2, 0, 0, 0, 0])  # half own label (neutral), half votes 0.6 / 0.4
    assert np.allclose(mix.sum(axis=1), 1.0)
    arrays = load_faces(tmp_path, "train")
    tight = arrays.dataset == "tightset"
    assert arrays.au_mask[tight].any() and arrays.au_mask[~tight].all(axis=None) == faces.au_mask[~tight].all()
    smiling = tight & (arrays.fe == BASIC_EXPRESSIONS.index("happiness"))
    assert np.all(arrays.au[smiling, AUS.index(12)] > 0.5)
    batch = make_batch(arrays, torch.arange(4), gen=torch.Generator().manual_seed(0))
    assert batch["image"].shape == (4, 1, 64, 64) and batch["fe_soft"].shape == (4, 7)
    assert "true_aspect_image" not in batch
    twin = make_batch(arrays, torch.arange(4), gen=torch.Generator().manual_seed(0), true_aspect=True)
    assert torch.equal(twin["image"], batch["image"]) and twin["true_aspect_image"].shape == (4, 1, 64, 64)
    halves = RealData(faces=tmp_path)
    assert len(halves.split("val")) + len(halves.split("holdout")) == len(faces)
    assert arrays.fe_peer is None  # no peer target file: no peer teacher
    peer = np.full((len(faces), 7), np.nan, np.float32)
    peer[tight] = 1 / 7
    PeerTargets(faces.key, peer, "sha").save(tmp_path / "train.peer.npz")
    np.testing.assert_array_equal(load_faces(tmp_path, "train").fe_peer, peer)
    PeerTargets(faces.key[::-1], peer, "sha").save(tmp_path / "train.peer.npz")
    with pytest.raises(DataError, match=r"train\.peer\.npz does not belong to this face cache"):
        load_faces(tmp_path, "train")


def test_soft_expression_targets_reduce_to_cross_entropy() -> None:
    logits = torch.randn(5, 7)
    hard = torch.tensor([0, 3, -1, 6, 2])
    onehot = torch.zeros(5, 7)
    onehot[[0, 1, 3, 4], hard[[0, 1, 3, 4]]] = 1.0
    assert torch.allclose(fe_ce(logits, hard), fe_ce(logits, onehot))
    spread = torch.full((5, 7), 1 / 7)
    assert torch.allclose(fe_ce(logits, spread), -torch.log_softmax(logits, -1).mean(1).mean())
