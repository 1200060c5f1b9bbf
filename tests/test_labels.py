import numpy as np
import pytest

from edge.labels import (
    AU_NUMBERS,
    BASIC_EXPRESSIONS,
    DATASET_AUS,
    DEFAULT_LABELS,
    FACS_PRIOR,
    LabelError,
    LabelSpace,
    action_unit,
    dataset_au_mask,
    facs_prior,
)


def test_au_space_covers_bp4d_disfa_and_prior():
    union = set(DATASET_AUS["bp4d"]) | set(DATASET_AUS["disfa"])
    assert union | {5, 20} <= set(AU_NUMBERS)
    for aus in FACS_PRIOR.values():
        assert set(aus) <= set(AU_NUMBERS)


def test_every_au_has_name_and_prompt_text():
    for n in AU_NUMBERS:
        au = action_unit(n)
        assert au.name and au.description
        assert au.text.startswith(f"AU{n}: ")
    assert DEFAULT_LABELS.expressions == BASIC_EXPRESSIONS
    assert "contempt" not in BASIC_EXPRESSIONS


def test_prior_matches_facs_table():
    prior = facs_prior(DEFAULT_LABELS, off=0.05)
    assert prior.shape == (len(BASIC_EXPRESSIONS), len(AU_NUMBERS))
    row = prior[BASIC_EXPRESSIONS.index("happiness")]
    on = {AU_NUMBERS[j] for j in np.flatnonzero(row == 1.0)}
    assert on == {6, 12}
    assert np.all(prior[BASIC_EXPRESSIONS.index("neutral")] == np.float32(0.05))
    fear = {AU_NUMBERS[j] for j in np.flatnonzero(prior[BASIC_EXPRESSIONS.index("fear")] == 1.0)}
    assert fear == {1, 2, 4, 5, 20, 26}


def test_prior_follows_a_subset_label_space():
    space = LabelSpace(aus=(12, 6), expressions=("happiness", "contempt"))
    prior = facs_prior(space, off=0.0)
    np.testing.assert_array_equal(prior, [[1.0, 1.0], [1.0, 0.0]])


def test_dataset_mask():
    mask = dataset_au_mask("disfa")
    assert [n for n, m in zip(AU_NUMBERS, mask, strict=True) if m] == sorted(DATASET_AUS["disfa"])
    with pytest.raises(LabelError, match="unknown AU dataset"):
        dataset_au_mask("ck+")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"aus": (1, 3)}, "unknown action unit AU3"),
        ({"expressions": ("joy",)}, "unknown expression 'joy'"),
        ({"aus": (1, 1)}, "duplicate AUs"),
        ({"aus": ()}, "at least one AU"),
    ],
)
def test_bad_label_spaces(kwargs, message):
    with pytest.raises(LabelError, match=message):
        LabelSpace(**kwargs)
