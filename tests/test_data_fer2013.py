"""FER2013 / FER+ loaders on fixtures written here in the layouts the datasets ship in (no real data needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.labels import BASIC_EXPRESSIONS
from quantize.data.fer2013 import (
    FERPLUS_VOTES,
    attach_ferplus,
    ferplus_target,
    load_fer2013_csv,
    load_fer2013_folders,
    load_ferplus_csv,
    load_ferplus_folders,
    read_original,
)
from quantize.data.image_folder import load_labelled_folder
from quantize.data.types import DataError

E = BASIC_EXPRESSIONS.index


def faces(n: int, seed: int) -> np.ndarray:
    """Distinct smooth 48x48 grey images (smooth, so JPEG keeps them close)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (n, 6, 6)).astype(np.uint8)
    return np.stack([cv2.resize(s, (48, 48), interpolation=cv2.INTER_CUBIC) for s in small])


# rows: (Usage, FER2013 emotion code, 10 FER+ votes)
ROWS = [
    ("Training", 3, [0, 9, 1, 0, 0, 0, 0, 0, 0, 0]),  # happy; FER+ happiness, a stray surprise vote
    ("Training", 6, [6, 0, 0, 4, 0, 0, 0, 0, 0, 0]),  # neutral; FER+ neutral 6 / sadness 4
    ("Training", 0, [0, 0, 0, 0, 0, 0, 0, 0, 0, 10]),  # angry; FER+: not a face -> dropped
    ("PublicTest", 5, [0, 0, 8, 0, 0, 0, 2, 0, 0, 0]),  # surprise
    ("PrivateTest", 4, [2, 0, 0, 5, 0, 0, 0, 0, 3, 0]),  # sad
    ("PrivateTest", 1, [0, 0, 0, 0, 4, 4, 0, 0, 2, 0]),  # disgust; FER+ tie anger/disgust -> no hard label
]
FOLDERS = {0: "angry", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral"}
PREFIX = {"Training": "Training", "PublicTest": "PublicTest", "PrivateTest": "PrivateTest"}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fer")
    pixels = faces(len(ROWS), 0)
    kaggle, ferplus = root / "kaggle", root / "ferplus"
    with (root / "fer2013.csv").open("w", newline="") as fh, (root / "fer2013new.csv").open("w", newline="") as fn:
        w, wn = csv.writer(fh), csv.writer(fn)
        w.writerow(["emotion", "pixels", "Usage"])
        wn.writerow(["Usage", "Image name", *FERPLUS_VOTES])
        for i, (usage, code, votes) in enumerate(ROWS):
            w.writerow([code, " ".join(map(str, pixels[i].ravel())), usage])
            wn.writerow([usage, f"fer{i:07d}.png", *votes])
            sub = "train" if usage == "Training" else "test"
            folder = kaggle / sub / FOLDERS[code]
            folder.mkdir(parents=True, exist_ok=True)
            # the Kaggle folders hold JPEGs named by an unrelated id: matching must go by pixels
            cv2.imwrite(str(folder / f"{PREFIX[usage]}_{9000 - 7 * i}.jpg"), pixels[i])
            split_dir = ferplus / {"Training": "FER2013Train", "PublicTest": "FER2013Valid",
                                   "PrivateTest": "FER2013Test"}[usage]
            split_dir.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(split_dir / f"fer{i:07d}.png"), pixels[i])
            with (split_dir / "label.csv").open("a", newline="") as fl:
                csv.writer(fl).writerow([f"fer{i:07d}.png", "(0, 0, 48, 48)", *votes])
    return {"root": root, "kaggle": kaggle, "ferplus": ferplus}


def test_kaggle_folders_and_csv_agree(layouts) -> None:
    for split, usage in (("train", "Training"), ("public", "PublicTest"), ("private", "PrivateTest")):
        folders = load_fer2013_folders(layouts["kaggle"], split)
        table = load_fer2013_csv(layouts["root"] / "fer2013.csv", split)
        want = sorted(E({"angry": "anger", "disgust": "disgust", "fear": "fear", "happy": "happiness",
                         "sad": "sadness", "surprise": "surprise", "neutral": "neutral"}[FOLDERS[c]])
                      for u, c, _ in ROWS if u == usage)
        assert sorted(i.expression for i in folders) == want == sorted(i.expression for i in table)
        assert all(i.tight and i.read().shape == (48, 48, 3) for i in folders + table)
    private = load_fer2013_folders(layouts["kaggle"], "private")
    assert all(Path(i.key).name.startswith("PrivateTest_") for i in private)  # PublicTest not mixed in


def test_ferplus_rules() -> None:
    votes, majority = ferplus_target(np.array([0, 9, 1, 0, 0, 0, 0, 0, 0, 0]))
    assert majority == E("happiness") and votes[E("surprise")] == 0  # the stray vote is dropped
    assert ferplus_target(np.array([0, 0, 0, 0, 0, 0, 0, 0, 3, 7])) is None  # not a face
    assert ferplus_target(np.array([2, 0, 0, 0, 0, 0, 0, 0, 6, 2])) is None  # unknown wins
    votes, majority = ferplus_target(np.array([0, 0, 0, 0, 4, 4, 0, 0, 2, 0]))
    assert majority == -1 and votes[E("anger")] == votes[E("disgust")] == 4  # a tie: votes only
    votes, majority = ferplus_target(np.array([0, 0, 0, 0, 0, 0, 0, 7, 0, 0]) + np.eye(10)[1].astype(int) * 3)
    assert majority == E("happiness") and votes.sum() == 3  # contempt has no class here


def test_ferplus_folders_csv_and_matching(layouts) -> None:
    folders = {i.key.split("/")[-1]: i for i in load_ferplus_folders(layouts["ferplus"], "train")}
    assert sorted(folders) == ["fer0000000.png", "fer0000001.png"]  # the not-a-face row is dropped
    csv_items = load_ferplus_csv(layouts["root"] / "fer2013new.csv", layouts["root"] / "fer2013.csv", "private")
    assert [i.expression for i in csv_items] == [E("sadness"), -1]
    images, match = attach_ferplus(load_fer2013_folders(layouts["kaggle"], "train"), layouts["ferplus"], "train")
    assert (match.with_votes, match.dropped, match.unmatched) == (2, 1, 0)
    by_label = {i.expression: i for i in images}
    assert by_label[E("neutral")].votes[E("sadness")] == 4  # FER2013's own label kept, FER+ votes attached
    assert by_label[E("happiness")].votes[E("happiness")] == 9


def test_matching_refuses_a_different_image(layouts, tmp_path) -> None:
    other = tmp_path / "train" / "happy"
    other.mkdir(parents=True)
    cv2.imwrite(str(other / "Training_1.jpg"), faces(1, 99)[0])
    images, match = attach_ferplus(load_fer2013_folders(tmp_path, "train"), layouts["ferplus"], "train")
    assert match.unmatched == 1 and images[0].votes is None


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_duplicate_ferplus_rows_that_disagree_are_pooled_in_any_order(tmp_path, order) -> None:
    """FER2013 repeats images and FER+'s crowd voted on each copy separately; seen on the real set: one copy
    "not a face", the other a face. Which row matched used to depend on sort order."""
    pixels = faces(1, 5)[0]
    votes = ([0, 0, 0, 0, 0, 0, 0, 0, 4, 6], [0, 9, 0, 0, 0, 0, 0, 0, 0, 1])  # not a face / happiness 9
    split_dir = tmp_path / "ferplus" / "FER2013Train"
    split_dir.mkdir(parents=True)
    for n in order:
        cv2.imwrite(str(split_dir / f"fer{n:07d}.png"), pixels)
        with (split_dir / "label.csv").open("a", newline="") as fl:
            csv.writer(fl).writerow([f"fer{n:07d}.png", "(0, 0, 48, 48)", *votes[n]])
    (tmp_path / "train" / "happy").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "train" / "happy" / "Training_1.jpg"), pixels)
    images, match = attach_ferplus(load_fer2013_folders(tmp_path, "train"), tmp_path / "ferplus", "train")
    assert (match.with_votes, match.dropped) == (1, 0)  # pooled: happiness 9 beats not-a-face 7
    assert images[0].votes[E("happiness")] == 9 and images[0].votes.sum() == 9


def test_errors_name_the_file(layouts, tmp_path) -> None:
    with pytest.raises(DataError, match=r"label\.csv does not exist"):
        load_ferplus_folders(tmp_path, "train")
    bad = tmp_path / "FER2013Train"
    bad.mkdir()
    (bad / "label.csv").write_text("a.png,(0, 0, 48, 48),1,2\n")
    with pytest.raises(DataError, match=r"label.csv:1: expected 'name,\(box\),10 votes'"):
        load_ferplus_folders(tmp_path, "train")
    (tmp_path / "train" / "smug").mkdir(parents=True)
    with pytest.raises(DataError, match="unknown FER2013 class folder"):
        load_fer2013_folders(tmp_path, "train")
    with pytest.raises(DataError, match="split must be one of"):
        load_fer2013_folders(layouts["kaggle"], "test")
    csv_path = tmp_path / "fer2013.csv"
    csv_path.write_text("emotion,pixels,Usage\n3,1 2 3,Training\n")
    with pytest.raises(DataError, match=r"fer2013.csv:2: pixels must be 2304 values"):
        load_fer2013_csv(csv_path, "train")


def test_labelled_folder(tmp_path) -> None:
    cv2.imwrite(str(tmp_path / "a.jpg"), faces(1, 1)[0])
    (tmp_path / "labels.csv").write_text("relpath,label\na.jpg,happy\n")
    (item,) = load_labelled_folder(tmp_path / "labels.csv", "mine")
    assert (item.expression, item.dataset, item.person) == (E("happiness"), "mine", "a.jpg")
    (tmp_path / "labels.csv").write_text("relpath,label\na.jpg,smug\n")
    with pytest.raises(DataError, match=r"labels.csv:2: unknown expression 'smug'"):
        load_labelled_folder(tmp_path / "labels.csv")


def test_read_original_by_cache_key_and_a_clear_error_for_a_wrong_root(tmp_path):
    face = np.arange(48 * 48, dtype=np.uint8).reshape(48, 48)
    (tmp_path / "train" / "happy").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "train" / "happy" / "Training_1.png"), face)
    np.testing.assert_array_equal(read_original(tmp_path, np.str_("train/happy/Training_1.png")), face)
    with pytest.raises(DataError, match=r"elsewhere.*Training_1\.png: cannot read \(is --fer2013 the folder"):
        read_original(tmp_path / "elsewhere", "train/happy/Training_1.png")
