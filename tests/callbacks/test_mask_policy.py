"""The mask's pure functions: the GSNR estimator against known truths, and the decision rules as tables."""

from __future__ import annotations

import math

import pytest
import torch

from masm_lightning.adapters.gsnr import (
    GradientMoments,
    combine_masks,
    dominance_rule,
    estimate_ready,
    floor_rule,
    layer_rule,
    layer_scores,
    layer_shares,
    released,
    segment_gsnr,
    spread_shares,
    type_shares,
    weight_sums,
)


def _stream(
    truth: float, size: int, steps: int, momentum: float, seed: int = 0, scale: torch.Tensor | None = None
) -> GradientMoments:
    gen = torch.Generator().manual_seed(seed)
    mu = (torch.randint(0, 2, (size,), generator=gen) * 2 - 1) * math.sqrt(truth)
    scale = torch.ones(size) if scale is None else scale
    moments = GradientMoments.zeros(size, momentum)
    for _ in range(steps):
        moments.update(scale * (mu + torch.randn(size, generator=gen)))
    return moments


@pytest.mark.parametrize(("truth", "tolerance"), [(0.0, 0.005), (0.01, 0.005), (0.05, 0.01), (1.0, 0.1), (10.0, 1.0)])
def test_the_estimate_reads_the_true_gsnr_including_zero(truth, tolerance):
    moments = _stream(truth, size=2048, steps=300, momentum=0.99)
    assert moments.gsnr().item() == pytest.approx(truth, abs=tolerance)


def test_pure_noise_reads_far_below_the_old_floor_at_any_momentum():
    # The previous estimator read (1 − β)/(1 + β) on pure noise: 0.053 at β = 0.9, above the old min_gsnr 0.01.
    for momentum in (0.9, 0.99):
        assert _stream(0.0, size=2048, steps=200, momentum=momentum).gsnr().item() < 0.01


def test_the_gsnr_does_not_depend_on_how_the_scale_is_split_between_coordinates():
    # U/V vs s: coordinates nine decades apart in scale, same per-coordinate GSNR → the same reading.
    uniform = _stream(1.0, size=1024, steps=300, momentum=0.99, seed=3)
    spread = torch.cat([torch.full((512,), 1e-12), torch.full((512,), 1e-3)])
    mixed = _stream(1.0, size=1024, steps=300, momentum=0.99, seed=3, scale=spread)
    torch.testing.assert_close(mixed.gsnr(), uniform.gsnr(), rtol=1e-3, atol=0)


def test_segments_are_scored_separately_and_a_constant_gradient_reads_huge():
    moments = GradientMoments.zeros(6, momentum=0.9)
    for t in range(20):
        noise = torch.randn(3, generator=torch.Generator().manual_seed(t))
        moments.update(torch.cat([torch.tensor([1e-6, -2e-6, 3e-6]), noise]))
    gsnr = moments.gsnr(torch.tensor([3, 3]))
    assert gsnr[0] > 1e6 and gsnr[1] < 1.0


def test_bias_correction_makes_the_mean_exact_from_the_first_sample():
    moments = GradientMoments.zeros(2, momentum=0.99)
    moments.update(torch.tensor([2.0, -4.0]))
    assert moments.mean.tolist() == [2.0, -4.0]  # no pull towards the zero initialisation
    moments.update(torch.tensor([4.0, -2.0]))
    w = torch.tensor([0.99, 1.0]) / 1.99  # normalised weights of the two samples
    expected = torch.tensor([w @ torch.tensor([2.0, 4.0]), w @ torch.tensor([-4.0, -2.0])])
    torch.testing.assert_close(moments.mean, expected)


def test_a_non_finite_sample_is_skipped():
    moments = GradientMoments.zeros(3, momentum=0.9)
    assert moments.update(torch.tensor([1.0, float("inf"), 0.0])) is False
    assert moments.count == 0 and torch.equal(moments.mean, torch.zeros(3)) and torch.equal(moments.var, torch.zeros(3))


READY = {  # (momentum, count) → defined?
    "three_samples": (0.99, 3, False),
    "four_samples_uniform": (1.0, 4, True),
    "four_samples_ema": (0.99, 4, True),
    "momentum_zero_never": (0.0, 1000, False),  # one effective sample: no variance to divide by
}


@pytest.mark.parametrize(("momentum", "count", "ready"), READY.values(), ids=READY.keys())
def test_when_the_estimate_is_ready(momentum, count, ready):
    assert estimate_ready(momentum, count) is ready
    if not ready:
        assert torch.isnan(segment_gsnr(torch.zeros(4), torch.ones(4), count, momentum)).all()


def test_weight_sums_of_uniform_and_geometric_weights():
    assert weight_sums(1.0, 10) == (0.1, 0.01)
    w2, _ = weight_sums(0.9, 10_000)
    assert 1 / w2 == pytest.approx(19.0)  # n_eff = (1 + β)/(1 − β)


FLOOR_RULE = {  # per-sample gsnr, previously masked → masked   (floor 0.05, hysteresis 0.2)
    "noisy_trips": ([0.01], [False], [True]),
    "dead_band_keeps_unmasked": ([0.055], [False], [False]),
    "dead_band_keeps_masked": ([0.055], [True], [True]),
    "clears_margin_released": ([0.061], [True], [False]),
    "healthy_stays": ([0.5], [False], [False]),
    "nan_keeps_state": ([math.nan, math.nan], [True, False], [True, False]),
}


@pytest.mark.parametrize(("gsnr", "before", "after"), FLOOR_RULE.values(), ids=FLOOR_RULE.keys())
def test_floor_rule(gsnr, before, after):
    assert floor_rule(torch.tensor(gsnr), torch.tensor(before), floor=0.05, hysteresis=0.2).tolist() == after


def test_type_shares_count_fake_types_only():
    energy = torch.tensor([[9.0, 3.0, 1.0], [5.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # types: real, a, b
    shares = type_shares(energy, torch.tensor([False, True, True]))
    torch.testing.assert_close(shares, torch.tensor([[0.0, 0.75, 0.25], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


# shares over (real, a, b, c), losses (real, a, b, c), previously masked → masked, dominant type
# (min_share 0.5, fit_ratio 0.5, hysteresis 0.2; median of the fake losses 1.0 unless said)
LOSS = [0.7, 0.2, 1.0, 1.2]
DOMINANCE = {
    "dominated_by_a_fit_type_trips": ([0, 0.6, 0.2, 0.2], LOSS, False, True, 1),
    "dominant_but_not_fit_stays": ([0, 0.2, 0.6, 0.2], LOSS, False, False, 2),
    "fit_but_not_dominant_stays": ([0, 0.4, 0.3, 0.3], LOSS, False, False, 1),
    "share_in_dead_band_keeps_masked": ([0, 0.45, 0.3, 0.25], LOSS, True, True, 1),
    "share_below_margin_released": ([0, 0.39, 0.31, 0.3], LOSS, True, False, 1),
    "loss_in_dead_band_keeps_masked": ([0, 0.6, 0.2, 0.2], [0.7, 0.55, 1.0, 1.2], True, True, 1),
    "loss_above_margin_released": ([0, 0.6, 0.2, 0.2], [0.7, 0.65, 1.0, 1.2], True, False, 1),
    "no_energy_no_dominant": ([0, 0, 0, 0], LOSS, False, False, -1),
}


@pytest.mark.parametrize(("shares", "loss", "before", "after", "dominant"), DOMINANCE.values(), ids=DOMINANCE.keys())
def test_dominance_rule(shares, loss, before, after, dominant):
    present = torch.tensor([False, True, True, True])
    masked, top = dominance_rule(
        torch.tensor([shares]), torch.tensor(loss), present, torch.tensor([before]), 0.5, 0.5, 0.2
    )
    assert masked.tolist() == [after] and top.tolist() == [dominant]


def test_one_fake_type_cannot_dominate_among_types():
    masked, top = dominance_rule(
        torch.tensor([[0.0, 1.0, 0.0]]),
        torch.tensor([0.5, 0.01, math.nan]),
        torch.tensor([False, True, False]),
        torch.tensor([False]),
        0.5,
        0.5,
        0.2,
    )
    assert masked.tolist() == [False] and top.tolist() == [-1]


LAYER_RULE = {  # scores, keep_ratio, previously kept (None: first decision), hysteresis → kept
    "top_half": ([0.1, 3.0, 2.0, 0.2], 0.5, None, 0.0, [False, True, True, False]),
    "rounds_up": ([0.1, 3.0, 2.0], 0.5, None, 0.0, [False, True, True]),
    "at_least_one": ([0.1, 3.0, 2.0], 0.01, None, 0.0, [False, True, False]),
    "ties_to_the_earlier_layer": ([1.0, 1.0, 1.0], 0.3, None, 0.0, [True, False, False]),
    "incumbent_within_margin_stays": ([1.0, 0.9], 0.5, [False, True], 0.2, [False, True]),
    "challenger_beyond_margin_wins": ([1.0, 0.8], 0.5, [False, True], 0.2, [True, False]),
    "no_hysteresis_swaps": ([1.0, 0.9], 0.5, [False, True], 0.0, [True, False]),
    "nan_ranks_last": ([math.nan, 0.0], 0.5, None, 0.0, [False, True]),
}


@pytest.mark.parametrize(
    ("scores", "ratio", "kept", "hysteresis", "expected"), LAYER_RULE.values(), ids=LAYER_RULE.keys()
)
def test_layer_rule(scores, ratio, kept, hysteresis, expected):
    previous = None if kept is None else torch.tensor(kept)
    assert layer_rule(torch.tensor(scores), ratio, previous, hysteresis).tolist() == expected


def test_layer_scores_average_each_layers_subspaces():
    scores = layer_scores(torch.tensor([2.0, 0.0, 0.3, 0.1, 5.0]), torch.tensor([0, 0, 1, 1, 2]), 3)
    torch.testing.assert_close(scores, torch.tensor([1.0, 0.2, 5.0]))


def test_granularity_both_masks_whole_layers_and_noisy_subspaces_in_kept_layers():
    gsnr, layer_of = torch.tensor([2.0, 0.001, 0.3, 0.2]), torch.tensor([0, 0, 1, 1])
    # layer a scores higher (mean GSNR), but its second subspace is noise; layer b is dropped as a whole.
    kept = layer_rule(layer_scores(gsnr, layer_of, 2), keep_ratio=0.5)
    ruled = floor_rule(gsnr, torch.zeros(4, dtype=torch.bool), 0.01, 0.2)
    assert combine_masks(kept, ruled, layer_of).tolist() == [False, True, True, True]
    # the ablation: same statistics and decisions, nothing masked
    assert combine_masks(kept, ruled, layer_of, enabled=False).tolist() == [False] * 4


RELEASED = {
    "masked_then_free": ([True], [False], [True]),
    "still_masked": ([True], [True], [False]),
    "newly_masked": ([False], [True], [False]),
    "never_masked": ([False], [False], [False]),
}


@pytest.mark.parametrize(("before", "after", "expected"), RELEASED.values(), ids=RELEASED.keys())
def test_released(before, after, expected):
    assert released(torch.tensor(before), torch.tensor(after)).tolist() == expected


ERRORS = {
    "momentum": ({"momentum": 1.5}, r"GradientMoments.momentum must be in \[0, 1\], got 1.5"),
    "shape": ({"var": torch.zeros(2)}, r"GradientMoments.mean and .var differ in shape"),
}


@pytest.mark.parametrize(("kwargs", "message"), ERRORS.values(), ids=ERRORS.keys())
def test_bad_estimator_arguments_are_refused(kwargs, message):
    args = {"momentum": 0.9, "mean": torch.zeros(3), "var": torch.zeros(3)} | kwargs
    with pytest.raises(ValueError, match=message):
        GradientMoments(**args)


def test_layer_shares_single_out_the_layer_a_fit_type_concentrates_on():
    """A fit type's gradients are small everywhere; raw shares never let it dominate a layer, spread shares do."""
    # layers x types (real, a, b, c): type a (fit, tiny gradients) lands mostly in layer 0; b and c spread evenly.
    energy = torch.tensor([[5.0, 0.08, 1.0, 1.0], [5.0, 0.01, 1.0, 1.0], [5.0, 0.01, 1.0, 1.0]])
    fake = torch.tensor([False, True, True, True])
    raw, spread = type_shares(energy, fake), spread_shares(energy, fake)
    assert float(raw[:, 1].max()) < 0.05  # by raw energy, a is nowhere near dominating
    torch.testing.assert_close(
        spread[:, 1], torch.tensor([0.8 / (0.8 + 2 / 3), 0.1 / (0.1 + 2 / 3), 0.1 / (0.1 + 2 / 3)])
    )
    torch.testing.assert_close(spread.sum(dim=1), torch.ones(3))
    shares = layer_shares(energy, fake)  # the layer rule reads the larger of volume and spread
    torch.testing.assert_close(shares, torch.maximum(raw, spread))
    masked, dominant = dominance_rule(shares, torch.tensor(LOSS), fake, torch.zeros(3, dtype=torch.bool), 0.5, 0.5, 0.2)
    assert masked.tolist() == [True, False, False] and int(dominant[0]) == 1
    # Raw shares alone would block no layer for the fit type a.
    assert not dominance_rule(raw, torch.tensor(LOSS), fake, torch.zeros(3, dtype=torch.bool), 0.5, 0.5, 0.2)[0].any()
    # Types that spread alike give every layer the same share 1/3, whatever their scale.
    even = spread_shares(torch.tensor([[0.0, 1.0, 100.0, 7.0]] * 4), fake)
    torch.testing.assert_close(even[:, 1:], torch.full((4, 3), 1 / 3))
