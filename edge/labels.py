"""Label spaces: the single source of truth for AUs, expressions and the FACS prior.

Every other module (training, export, bundle manifests, MQTT payloads) takes its
label lists from here, so a bundle's label spec can be checked against one table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ActionUnit:
    number: int
    name: str
    description: str

    @property
    def key(self) -> str:
        return f"AU{self.number}"

    @property
    def text(self) -> str:
        """Text description used as a TSP prompt (fixed part; context vectors go in front)."""
        return f"AU{self.number}: {self.name.lower()}, {self.description}"


# FACS names (Ekman, Friesen & Hager, FACS Manual 2002). Descriptions are the
# visible appearance change, written to be usable as text-encoder prompts.
ACTION_UNITS: tuple[ActionUnit, ...] = (
    ActionUnit(1, "Inner brow raiser", "the inner ends of the eyebrows are pulled up"),
    ActionUnit(2, "Outer brow raiser", "the outer ends of the eyebrows are pulled up"),
    ActionUnit(4, "Brow lowerer", "the eyebrows are lowered and drawn together"),
    ActionUnit(5, "Upper lid raiser", "the upper eyelids are raised and the eyes widen"),
    ActionUnit(6, "Cheek raiser", "the cheeks are lifted and crow's feet form by the eyes"),
    ActionUnit(7, "Lid tightener", "the eyelids are tightened and the eye opening narrows"),
    ActionUnit(9, "Nose wrinkler", "the skin of the nose wrinkles upwards"),
    ActionUnit(10, "Upper lip raiser", "the upper lip is raised"),
    ActionUnit(12, "Lip corner puller", "the lip corners are pulled up and back"),
    ActionUnit(14, "Dimpler", "the lip corners are tightened into dimples"),
    ActionUnit(15, "Lip corner depressor", "the lip corners are pulled down"),
    ActionUnit(17, "Chin raiser", "the chin boss is pushed up and the lower lip rises"),
    ActionUnit(20, "Lip stretcher", "the lips are stretched sideways"),
    ActionUnit(23, "Lip tightener", "the lips are tightened and narrowed"),
    ActionUnit(24, "Lip pressor", "the lips are pressed together"),
    ActionUnit(25, "Lips part", "the lips are parted"),
    ActionUnit(26, "Jaw drop", "the jaw is lowered and the mouth opens"),
)

AU_NUMBERS: tuple[int, ...] = tuple(au.number for au in ACTION_UNITS)
_AU_BY_NUMBER = {au.number: au for au in ACTION_UNITS}

# Which AUs each AU-coded dataset labels; losses are masked to these.
DATASET_AUS: dict[str, tuple[int, ...]] = {
    "bp4d": (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24),
    "disfa": (1, 2, 4, 6, 9, 12, 25, 26),
}


@dataclass(frozen=True)
class Expression:
    name: str
    description: str

    @property
    def text(self) -> str:
        return f"{self.name}: {self.description}"


EXPRESSIONS: tuple[Expression, ...] = (
    Expression("neutral", "relaxed face with no muscle movement"),
    Expression("happiness", "cheek raiser, lip corner puller"),
    Expression("sadness", "inner brow raiser, brow lowerer, lip corner depressor"),
    Expression("surprise", "brows raised, upper lids raised, jaw dropped"),
    Expression("fear", "brows raised and drawn together, upper lids raised, lips stretched"),
    Expression("disgust", "nose wrinkler, upper lip raiser, lip corner depressor, chin raiser"),
    Expression("anger", "brow lowerer, upper lid raiser, lid tightener, lip tightener"),
    Expression("contempt", "one lip corner tightened and raised"),
)
_EXPR_BY_NAME = {e.name: e for e in EXPRESSIONS}
BASIC_EXPRESSIONS: tuple[str, ...] = tuple(e.name for e in EXPRESSIONS if e.name != "contempt")

# FACS emotion -> AU prototypes. Source: EMFACS-7 prototype table (Friesen &
# Ekman 1983), as summarised in Matsumoto & Ekman, "Facial expression analysis",
# Scholarpedia 3(5):4237 (2008), and used as the DPM prior in SSM
# (arXiv 2604.10541). Contempt is unilateral AU12+AU14; neutral has no AU.
FACS_PRIOR: dict[str, tuple[int, ...]] = {
    "neutral": (),
    "happiness": (6, 12),
    "sadness": (1, 4, 15),
    "surprise": (1, 2, 5, 26),
    "fear": (1, 2, 4, 5, 20, 26),
    "disgust": (9, 10, 15, 17),
    "anger": (4, 5, 7, 23),
    "contempt": (12, 14),
}


class LabelError(ValueError):
    """An AU number or expression name outside the known label spaces."""


def action_unit(number: int) -> ActionUnit:
    try:
        return _AU_BY_NUMBER[number]
    except KeyError:
        raise LabelError(f"unknown action unit AU{number}; known: {list(AU_NUMBERS)}") from None


def expression(name: str) -> Expression:
    try:
        return _EXPR_BY_NAME[name]
    except KeyError:
        known = [e.name for e in EXPRESSIONS]
        raise LabelError(f"unknown expression {name!r}; known: {known}") from None


@dataclass(frozen=True)
class LabelSpace:
    """An ordered AU list and expression list: the columns of a model's outputs."""

    aus: tuple[int, ...] = AU_NUMBERS
    expressions: tuple[str, ...] = BASIC_EXPRESSIONS

    def __post_init__(self) -> None:
        for number in self.aus:
            action_unit(number)
        for name in self.expressions:
            expression(name)
        if len(set(self.aus)) != len(self.aus):
            raise LabelError(f"duplicate AUs in label space: {list(self.aus)}")
        if len(set(self.expressions)) != len(self.expressions):
            raise LabelError(f"duplicate expressions in label space: {list(self.expressions)}")
        if not self.aus or not self.expressions:
            raise LabelError("a label space needs at least one AU and one expression")

    @property
    def au_keys(self) -> list[str]:
        return [f"AU{n}" for n in self.aus]

    def au_texts(self) -> list[str]:
        return [action_unit(n).text for n in self.aus]

    def expression_texts(self) -> list[str]:
        return [expression(e).text for e in self.expressions]

    def au_mask(self, labelled: tuple[int, ...] | list[int]) -> np.ndarray:
        """Boolean mask over this space's AUs: True where a dataset labels the AU."""
        for number in labelled:
            action_unit(number)
        wanted = set(labelled)
        return np.array([n in wanted for n in self.aus], dtype=bool)


DEFAULT_LABELS = LabelSpace()


def dataset_au_mask(dataset: str, space: LabelSpace = DEFAULT_LABELS) -> np.ndarray:
    try:
        labelled = DATASET_AUS[dataset]
    except KeyError:
        raise LabelError(f"unknown AU dataset {dataset!r}; known: {sorted(DATASET_AUS)}") from None
    return space.au_mask(labelled)


def facs_prior(space: LabelSpace = DEFAULT_LABELS, off: float = 0.05) -> np.ndarray:
    """Expression x AU prior matrix M0: 1 where FACS links them, `off` elsewhere."""
    if not 0.0 <= off < 1.0:
        raise ValueError(f"off-prototype prior must be in [0, 1), got {off}")
    prior = np.full((len(space.expressions), len(space.aus)), off, dtype=np.float32)
    column = {n: j for j, n in enumerate(space.aus)}
    for i, name in enumerate(space.expressions):
        for number in FACS_PRIOR[name]:
            if number in column:
                prior[i, column[number]] = 1.0
    return prior
