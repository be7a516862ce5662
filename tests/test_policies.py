import itertools
import random

import pytest
import torch

from budcache.baselines import (
    fora_for_budget,
    fora_mask,
    lemica_edge_weights,
    lemica_path,
    magcache,
    magcache_for_budget,
    magcache_mask,
    magcache_ratios,
    static_policies,
    taylorseer_for_budget,
    taylorseer_mask,
)
from budcache.plan import uniform_mask
from budcache.sampling import OutputDenoiser, linear_sigmas, sample
from budcache.search import Batch, Evaluator

# MagCache's published FLUX-dev ratios (28 steps), notes/baselines.md section 2
FLUX = [
    1.0,
    1.21094,
    1.11719,
    1.07812,
    1.0625,
    1.03906,
    1.03125,
    1.03906,
    1.02344,
    1.03125,
    1.02344,
    0.98047,
    1.01562,
    1.00781,
    1.0,
    1.00781,
    1.0,
    1.00781,
    1.0,
    1.0,
    0.99609,
    0.99609,
    0.98047,
    0.98828,
    0.96484,
    0.95703,
    0.93359,
    0.89062,
]


def steps(mask):
    return [k for k, m in enumerate(mask) if m]


def strip(mask):
    return "".join(map(str, mask))


# -- FORA ------------------------------------------------------------------------------------
def test_fora_mask():
    assert steps(fora_mask(28, 3)) == list(range(0, 28, 3))  # 10 NFE, notes section 4
    assert fora_mask(5, 1) == [1] * 5
    with pytest.raises(ValueError):
        fora_mask(5, 0)


def test_fora_for_budget_hits_every_budget():
    for b in range(1, 29):
        mask, note = fora_for_budget(28, b)
        assert len(mask) == 28 and mask[0] == 1 and sum(mask) == b
    assert fora_for_budget(28, 10) == (fora_mask(28, 3), "FORA interval 3")
    assert fora_for_budget(28, 2)[0] == fora_mask(28, 14)  # the most even of intervals 14..27
    mask, note = fora_for_budget(28, 11)  # ceil(28/3) = 10, ceil(28/2) = 14: no interval gives 11
    assert mask == uniform_mask(28, 11) and "uniform" in note
    with pytest.raises(ValueError):
        fora_for_budget(28, 0)


# -- TaylorSeer ------------------------------------------------------------------------------
def test_taylorseer_schedule_matches_the_notes():
    assert [sum(taylorseer_mask(28, n)) for n in range(2, 7)] == [15, 11, 9, 8, 7]
    assert steps(taylorseer_mask(28, 6)) == [0, 1, 2, 8, 14, 20, 26]
    assert steps(taylorseer_mask(28, 4)) == [0, 1, 2, 6, 10, 14, 18, 22, 26]
    assert sum(taylorseer_mask(50, 6)) == 10  # the paper's 50-step FLUX setting
    assert steps(taylorseer_mask(10, 3, warmup=1)) == [0, 3, 6, 9]


def test_taylorseer_for_budget_is_exact_and_fills_the_longest_gaps_at_their_end():
    for b in range(3, 29):
        mask = taylorseer_for_budget(28, b)
        assert len(mask) == 28 and mask[0:3] == [1, 1, 1] and sum(mask) == b
    for n, b in zip(range(2, 7), [15, 11, 9, 8, 7]):
        assert taylorseer_for_budget(28, b) == taylorseer_mask(28, n)
    # B=10: N=4 gives 9 (reused runs 3-5, 7-9, ..., 23-25 and 27); the latest longest run ends at 25
    assert steps(taylorseer_for_budget(28, 10)) == [0, 1, 2, 6, 10, 14, 18, 22, 25, 26]
    # B=13: N=3 gives 11 (runs of 2 and the trailing 27); the two latest runs of 2 end at 25, 22
    assert steps(taylorseer_for_budget(28, 13)) == [0, 1, 2, 5, 8, 11, 14, 17, 20, 22, 23, 25, 26]
    # B=16: N=2 gives 15, every run has length 1; the latest is the trailing step 27
    assert steps(taylorseer_for_budget(28, 16)) == [0, 1, 2, *range(4, 28, 2), 27]
    with pytest.raises(ValueError, match="3..28"):
        taylorseer_for_budget(28, 2)


# -- MagCache --------------------------------------------------------------------------------
def test_magcache_ratios_average_per_sample_norm_ratios():
    base = torch.randn(2, 3, 4)
    base = base / base.flatten(1).norm(dim=1)[:, None, None]  # unit norm per sample
    scale = torch.tensor([[1.0, 2.0, 4.0], [2.0, 2.0, 1.0]])  # per (sample, step)
    residuals = [base * scale[:, k, None, None] for k in range(3)]
    assert magcache_ratios(residuals) == pytest.approx([1.0, (2 + 1) / 2, (2 + 0.5) / 2])


def test_magcache_flux_default_without_and_with_the_step_11_quirk():
    # E024K5R01 by hand: steps 0-2 retained; E crosses 0.24 at 5 (0.414) and 9 (0.330); runs of
    # 5 skips force 15 and 21; E reaches 0.386 at 26; step 27 is skipped (last step not forced).
    assert strip(magcache_mask(FLUX, 0.24, 5, 0.1)) == "1110010001000001000001000010"
    # the official FLUX script also computes index 11: the notes' simulated mask, NFE 9
    assert strip(magcache_mask(FLUX, 0.24, 5, 0.1, force=(11,))) == "1110010001010000010000010010"
    # other presets from the notes (with the quirk) and the non-monotone pair (without)
    assert sum(magcache_mask(FLUX, 0.12, 4, 0.1, force=(11,))) == 11
    assert sum(magcache_mask(FLUX, 0.06, 3, 0.2, force=(11,))) == 15
    assert [sum(magcache_mask(FLUX, t, 5, 0.1)) for t in (0.08, 0.09)] == [11, 12]


def test_magcache_rule_boundaries():
    assert magcache_mask([1.0, 1.5], 0.5, 5, 0.0) == [1, 0]  # E <= threshold skips (step 0 always computes)
    assert magcache_mask([1.0, 1.5], 0.4999, 5, 0.0) == [1, 1]
    assert magcache_mask([1.0] * 7, 0.0, 2, 0.0) == [1, 0, 0, 1, 0, 0, 1]  # n <= max_skip, then compute and reset
    # retention: steps k < floor(R T + 0.5) compute (0.1 * 25 + 0.5 = 3.0; 0.1 * 24 + 0.5 = 2.9)
    assert magcache_mask([1.0] * 25, 0.0, 30, 0.1) == [1, 1, 1] + [0] * 22
    assert magcache_mask([1.0] * 24, 0.0, 30, 0.1) == [1, 1] + [0] * 22


def test_magcache_resamples_by_nearest_index():
    assert magcache._resample([1, 2, 3, 4, 5], 3) == [1, 3, 5]
    assert magcache._resample([1, 2, 3, 4, 5], 1) == [5]
    ratios = [1.0, 1.5, 1.5, 1.5, 1.5]
    assert magcache_mask(ratios, 0.6, 5, 0.0, num_steps=3) == magcache_mask([1.0, 1.5, 1.5], 0.6, 5, 0.0)
    assert len(magcache_mask(FLUX, 0.24, 5, 0.1, num_steps=50)) == 50


def test_magcache_for_budget_is_exact_where_reachable():
    for b in [*range(3, 25), 28]:
        mask, info = magcache_for_budget(FLUX, 28, b)
        assert sum(mask) == b and mask[0] == 1 and info["exact"] and info["retention"] == 0.1
        assert magcache_mask(FLUX, info["threshold"], info["max_skip"], info["retention"]) == mask
        if 7 <= b <= 17:
            assert info["max_skip"] == 5  # reachable with the published K = 5
    assert magcache_for_budget(FLUX, 28, 3)[1]["max_skip"] > 5  # needs longer runs of skips


def test_magcache_for_budget_falls_back_to_the_closest_nfe_below():
    # gamma is exactly 1 at steps 14, 16, 18, 19: any threshold >= 0 skips them, so 25-27 are out of reach
    for b in (25, 26, 27):
        mask, info = magcache_for_budget(FLUX, 28, b)
        assert not info["exact"] and sum(mask) == 24
        assert steps([1 - m for m in mask]) == [14, 16, 18, 19]
    with pytest.raises(ValueError, match="at least 3"):
        magcache_for_budget(FLUX, 28, 2)


def test_magcache_for_budget_on_a_given_grid():
    grid = [1e-4 * 10 ** (5 * i / 299) for i in range(300)]
    for b in range(3, 25):
        mask, info = magcache_for_budget(FLUX, 28, b, thresholds=grid)
        assert sum(mask) == b and info["threshold"] in grid
        assert magcache_mask(FLUX, info["threshold"], info["max_skip"], 0.1) == mask


# -- LeMiCa ----------------------------------------------------------------------------------
def leximax_key(weights, mask):
    nodes = steps(mask)
    return sorted((weights[i, j] for i, j in zip(nodes, nodes[1:])), reverse=True)


def test_lemica_dp_equals_brute_force():
    rng, k = random.Random(0), 8
    weights = {(i, j): rng.random() for i in range(k) for j in range(i + 1, k)}
    for b in range(2, k + 1):
        masks = (
            [1 if s in (0, k - 1, *inner) else 0 for s in range(k)]
            for inner in itertools.combinations(range(1, k - 1), b - 2)
        )
        brute = min(masks, key=lambda m: leximax_key(weights, m))
        mask = lemica_path(weights, k, b)
        assert sum(mask) == b and mask[0] == mask[-1] == 1
        assert leximax_key(weights, mask) == leximax_key(weights, brute)
        assert mask == brute  # random weights: no ties


def test_lemica_minimises_the_largest_edge_then_the_next():
    # 0-1-3 has the smaller largest edge (5 < 6) though its sum is larger (10 > 6)
    weights = {(0, 1): 5.0, (1, 3): 5.0, (0, 2): 6.0, (2, 3): 0.0, (0, 3): 9.0, (1, 2): 9.0}
    assert steps(lemica_path(weights, 4, 3)) == [0, 1, 3]
    # equal largest edges: the second largest decides
    weights.update({(1, 3): 1.0, (0, 2): 5.0, (2, 3): 2.0})
    assert steps(lemica_path(weights, 4, 3)) == [0, 1, 3]
    weights[1, 3] = 3.0
    assert steps(lemica_path(weights, 4, 3)) == [0, 2, 3]
    assert steps(lemica_path(weights, 4, 2)) == [0, 3]
    assert lemica_path({}, 1, 1) == [1]


def test_lemica_raises_when_no_path_exists():
    weights = {(i, j): 1.0 for i in range(8) for j in range(i + 1, min(i + 2, 7) + 1)}  # spans <= 2
    with pytest.raises(ValueError, match=r"\[5, 6, 7, 8\]"):  # 7 steps in spans of <= 2: >= 4 edges
        lemica_path(weights, 8, 3)
    with pytest.raises(ValueError):
        lemica_path(weights, 8, 1)
    with pytest.raises(ValueError):
        lemica_path(weights, 8, 9)


def test_lemica_edge_weights_on_the_gmm_flow(gmm):
    k, x = 8, gmm.noise(16, 1)
    sigmas = linear_sigmas(k)
    evaluate = Evaluator([Batch(OutputDenoiser(gmm), x)], sigmas, metric="l1")
    weights = lemica_edge_weights(evaluate)
    assert set(weights) == {(i, j) for i in range(k) for j in range(i + 1, k)}
    assert all(w >= 0 for w in weights.values())
    assert all(weights[i, i + 1] == 0.0 for i in range(k - 1))
    assert max(weights.values()) > 0
    # one edge against a direct run: only steps 2..4 reuse step 1's velocity
    mask = [1, 1, 0, 0, 0, 1, 1, 1]
    teacher = sample(OutputDenoiser(gmm), x, sigmas, [1] * k)
    student = sample(OutputDenoiser(gmm), x, sigmas, mask)
    assert weights[1, 5] == pytest.approx(float((student - teacher).abs().mean()), rel=1e-5)
    capped = lemica_edge_weights(evaluate, max_span=3)
    assert set(capped) == {e for e in weights if e[1] - e[0] <= 3}
    assert all(capped[e] == weights[e] for e in capped)
    for b in range(2, k + 1):
        path = lemica_path(weights, k, b)
        assert sum(path) == b and path[0] == path[-1] == 1


# -- convenience -----------------------------------------------------------------------------
def test_static_policies():
    out = static_policies(28, 10)
    assert out == {
        "uniform": uniform_mask(28, 10),
        "FORA": fora_mask(28, 3),
        "TaylorSeer": taylorseer_for_budget(28, 10),
    }
    assert set(static_policies(28, 11)) == {"uniform", "TaylorSeer"}  # no FORA interval gives 11
    assert set(static_policies(28, 2)) == {"uniform", "FORA"}  # below TaylorSeer's warm-up
    assert all(sum(m) == b for b in range(1, 29) for m in static_policies(28, b).values())
