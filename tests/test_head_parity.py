"""The NumPy head (edge.head: the reference and the folded CPU path) against the PyTorch head it was trained as
(quantize.ssm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.head import NumpyHead, SmoothingSpec, head_forward, head_params_from_arrays, load_head_params
from edge.head.folded import FoldedHead
from edge.head.fp32_bound import assert_within, head_bound
from edge.head.params import HeadParams, save_head_params
from edge.labels import DATASET_AUS, DEFAULT_LABELS, LabelSpace
from quantize.ssm.dpm import DynamicPriorMapping
from quantize.ssm.head import SemanticHead


def trained_like_head(
    space: LabelSpace, dim: int, seed: int
) -> tuple[SemanticHead, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A SemanticHead + DPM with non-trivial parameters, as training would leave them."""
    torch.manual_seed(seed)
    head = SemanticHead(dim, len(space.aus), len(space.expressions))
    dpm = DynamicPriorMapping(space)
    with torch.no_grad():
        dpm.correction.normal_(0.0, 0.5)
        dpm.gate_ae.fill_(0.3)
        dpm.gate_ea.fill_(0.2)
        head.mix_fe_logit.fill_(0.4)
        head.mix_au_logit.fill_(-0.7)
        head.log_scale.fill_(float(np.log(12.0)))
        t_au = torch.nn.functional.normalize(torch.randn(len(space.aus), dim), dim=-1)
        t_fe = torch.nn.functional.normalize(torch.randn(len(space.expressions), dim), dim=-1)
        t_au2, t_fe2 = dpm.transfer(t_au, t_fe)
    return head, t_au2, t_fe2, dpm.mapping().detach()


def export(head: SemanticHead, t_au: torch.Tensor, t_fe: torch.Tensor, mapping: torch.Tensor, seed: int) -> HeadParams:
    arrays = head.export_params(t_au, t_fe, mapping)
    rng = np.random.default_rng(seed)
    arrays["au_threshold"] = rng.uniform(0.3, 0.7, mapping.shape[1]).astype(np.float32)
    return head_params_from_arrays(arrays, "<export_params>")


def torch_outputs(head, f: np.ndarray, g: np.ndarray, t_au, t_fe, mapping):
    with torch.no_grad():
        return head(torch.from_numpy(f).float(), torch.from_numpy(g).float(), t_au, t_fe, mapping)


FIELDS = ("fe_logits_raw", "au_logits_raw", "fe_logits", "fe_prob", "au_prob")


def assert_parity(params: HeadParams, f: np.ndarray, g: np.ndarray, ref) -> None:
    """Every output within the float32 rounding bound of docs/head.md ("Parity tolerance"), the reference's and
    the folded CPU path's."""
    out, bound = head_forward(params, f, g), head_bound(params, f, g)
    for name in FIELDS:
        assert_within(name, getattr(out, name), getattr(ref, name).numpy(), getattr(bound, name))
    fe_prob, au_prob = FoldedHead.of(params).forward(f, g)
    assert fe_prob.dtype == au_prob.dtype == np.float32
    assert_within("folded fe_prob", fe_prob, ref.fe_prob.numpy(), bound.fe_prob)
    assert_within("folded au_prob", au_prob, ref.au_prob.numpy(), bound.au_prob)


@pytest.fixture(scope="module")
def setup():
    head, t_au, t_fe, mapping = trained_like_head(DEFAULT_LABELS, 512, seed=3)
    return head, t_au, t_fe, mapping, export(head, t_au, t_fe, mapping, seed=3)


@pytest.mark.parametrize("batch", [1, 8, 64])
def test_random_inputs_match_torch(setup, batch: int) -> None:
    head, t_au, t_fe, mapping, params = setup
    rng = np.random.default_rng(batch)
    # Engine features are unnormalised with varying magnitude.
    f = (rng.standard_normal((batch, 512)) * rng.uniform(0.1, 5.0, (batch, 1))).astype(np.float32)
    g = (rng.standard_normal((batch, 512)) * rng.uniform(0.1, 5.0, (batch, 1))).astype(np.float32)
    assert_parity(params, f, g, torch_outputs(head, f, g, t_au, t_fe, mapping))


def test_golden_inputs_match_torch(setup) -> None:
    """Edge cases: zero features (eps clamp), huge features (saturated sigmoid/softmax), prototype-aligned ones."""
    head, t_au, t_fe, mapping, params = setup
    rng = np.random.default_rng(11)
    big = rng.standard_normal((2, 512)).astype(np.float32) * 1e3
    f = np.stack(
        [np.zeros(512, np.float32), big[0], t_fe[1].numpy() * 3.0, -t_fe[2].numpy(), np.full(512, 1e-8, np.float32)]
    )
    g = np.stack(
        [
            np.zeros(512, np.float32),
            big[1],
            t_au[8].numpy() * 0.5,
            t_au[0].numpy() * 40.0,
            np.full(512, -1e-8, np.float32),
        ]
    )
    ref = torch_outputs(head, f, g, t_au, t_fe, mapping)
    assert_parity(params, f, g, ref)
    out = head_forward(params, f, g)
    assert np.all(np.isfinite(out.fe_prob)) and np.all(np.isfinite(out.au_prob))
    np.testing.assert_allclose(out.fe_prob.sum(axis=1), 1.0, atol=1e-6)


def test_fp16_inputs_are_widened_exactly(setup) -> None:
    head, t_au, t_fe, mapping, params = setup
    rng = np.random.default_rng(5)
    f16 = rng.standard_normal((8, 512)).astype(np.float16)
    g16 = rng.standard_normal((8, 512)).astype(np.float16)
    ref = torch_outputs(head, f16.astype(np.float32), g16.astype(np.float32), t_au, t_fe, mapping)
    assert_parity(params, f16, g16, ref)


def test_other_label_space_and_dim() -> None:
    space = LabelSpace(DATASET_AUS["disfa"], ("neutral", "happiness", "sadness", "surprise"))
    head, t_au, t_fe, mapping = trained_like_head(space, 96, seed=9)
    params = export(head, t_au, t_fe, mapping, seed=9)
    assert (params.n_fe, params.n_au, params.dim) == (4, 8, 96)
    rng = np.random.default_rng(2)
    f, g = rng.standard_normal((2, 8, 96)).astype(np.float32)
    assert_parity(params, f, g, torch_outputs(head, f, g, t_au, t_fe, mapping))


def test_head_file_round_trip_and_decisions(setup, tmp_path) -> None:
    """Through the bundle's .npz file: same outputs; thresholds and top expression follow torch's probabilities."""
    head, t_au, t_fe, mapping, params = setup
    path = tmp_path / "head.npz"
    save_head_params(params, path)
    loaded = load_head_params(path)
    rng = np.random.default_rng(8)
    f, g = rng.standard_normal((2, 16, 512)).astype(np.float32)
    ref = torch_outputs(head, f, g, t_au, t_fe, mapping)
    assert_parity(loaded, f, g, ref)
    batch = NumpyHead(loaded, SmoothingSpec("none")).run(f, g, np.full(16, -1), np.zeros(16, bool))
    p_au = ref.au_prob.numpy()
    # decisions within the rounding bound may go either way
    clear = np.abs(p_au - loaded.au_threshold) > head_bound(loaded, f, g).au_prob
    np.testing.assert_array_equal(batch.au_active[clear], (p_au >= loaded.au_threshold)[clear])
    np.testing.assert_array_equal(batch.top_expression, ref.fe_prob.numpy().argmax(axis=1))


def test_the_bound_is_tight_enough_to_catch_a_one_percent_error(setup) -> None:
    """A tolerance that cannot fail is no test: a 1% error in one weight row must break parity."""
    head, t_au, t_fe, mapping, params = setup
    rng = np.random.default_rng(4)
    f, g = rng.standard_normal((2, 32, 512)).astype(np.float32)
    ref = torch_outputs(head, f, g, t_au, t_fe, mapping)
    arrays = params.arrays()
    arrays["fe_weight"] = arrays["fe_weight"].copy()
    arrays["fe_weight"][3] *= np.float32(1.01)
    with pytest.raises(AssertionError, match="fe_logits_raw"):
        assert_parity(head_params_from_arrays(arrays, "<perturbed>"), f, g, ref)
    bound = head_bound(params, f, g)  # informative on ordinary features, not a blanket "anything goes"
    assert float(bound.fe_prob.max()) < 0.01 and float(bound.au_prob.max()) < 0.01


def test_the_folded_path_is_held_to_the_same_bound(setup) -> None:
    """A 1% error in one folded prior constant breaks parity; a feature of the wrong width is a clear error."""
    from dataclasses import replace

    head, t_au, t_fe, mapping, params = setup
    rng = np.random.default_rng(6)
    f, g = rng.standard_normal((2, 32, 512)).astype(np.float32)
    ref = torch_outputs(head, f, g, t_au, t_fe, mapping)
    folded = FoldedHead.of(params)
    bound = head_bound(params, f, g)
    wrong = replace(folded, expect=folded.expect * np.float32(1.01))
    with pytest.raises(AssertionError, match="au_prob"):
        assert_within("au_prob", wrong.forward(f, g)[1], ref.au_prob.numpy(), bound.au_prob)
    with pytest.raises(ValueError, match=r"shape \(batch, 512\)"):
        folded.forward(f[:, :100], g)
