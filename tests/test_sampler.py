import pytest
import torch

from budcache.hooks.stack import install, stack_hooks, uninstall
from budcache.sampling import OutputDenoiser, ResidualDenoiser, State, advance, euler, linear_sigmas, sample

MASKS = [[1, 0, 0, 1, 0, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0, 0, 0, 0, 1], [1] + [0] * 9, [1] * 10]


@pytest.mark.parametrize("mask", MASKS)
def test_output_reuse_is_euler_on_computed_sigmas(gmm, mask):
    sigmas = linear_sigmas(10)
    x = gmm.noise(32, 0)
    cached = sample(OutputDenoiser(gmm), x, sigmas, mask)
    sub = [s for s, m in zip(sigmas, mask) if m] + [0.0]
    assert torch.allclose(cached, euler(gmm, x, sub), atol=1e-6)


def test_output_reuse_on_flux_is_euler_on_computed_sigmas(tiny_flux):
    sigmas, mask = linear_sigmas(10), MASKS[0]
    with torch.no_grad():
        cached = sample(OutputDenoiser(tiny_flux.velocity), tiny_flux.noise, sigmas, mask)
        sub = [s for s, m in zip(sigmas, mask) if m] + [0.0]
        assert torch.allclose(cached, euler(tiny_flux.velocity, tiny_flux.noise, sub), atol=1e-5)


@torch.no_grad()
def test_residual_all_ones_is_bit_identical_and_removal_restores(tiny_flux):
    sigmas = linear_sigmas(6)
    reference = euler(tiny_flux.velocity, tiny_flux.noise, sigmas)
    with stack_hooks(tiny_flux.transformer) as stack:
        out = sample(ResidualDenoiser(tiny_flux.velocity, stack), tiny_flux.noise, sigmas, [1] * 6)
    assert torch.equal(out, reference)
    assert torch.equal(euler(tiny_flux.velocity, tiny_flux.noise, sigmas), reference)
    assert all(
        getattr(b, "_diffusers_hook", None) is None or not b._diffusers_hook.hooks
        for b in [*tiny_flux.transformer.transformer_blocks, *tiny_flux.transformer.single_transformer_blocks]
    )


@torch.no_grad()
@pytest.mark.parametrize("mask", MASKS)
def test_residual_executes_block_stack_exactly_budget_times(tiny_flux, mask):
    """Counted by the hooks and, independently, by the attention of every block."""
    blocks = [*tiny_flux.transformer.transformer_blocks, *tiny_flux.transformer.single_transformer_blocks]
    calls = {i: 0 for i in range(len(blocks))}
    handles = [
        b.attn.register_forward_hook(lambda m, i, o, n=n: calls.__setitem__(n, calls[n] + 1))
        for n, b in enumerate(blocks)
    ]
    try:
        with stack_hooks(tiny_flux.transformer) as stack:
            den = ResidualDenoiser(tiny_flux.velocity, stack)
            sample(den, tiny_flux.noise, linear_sigmas(10), mask)
            assert den.executions == sum(mask)
        assert set(calls.values()) == {sum(mask)}
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def test_residual_reuse_runs_head_at_current_input(tiny_flux):
    """Reusing a residual at the same (x, sigma) it was computed at reproduces the full output;
    at another x the embedding and head see the new input (unlike output reuse)."""
    x, sigma = tiny_flux.noise, 0.7
    with stack_hooks(tiny_flux.transformer) as stack:
        den = ResidualDenoiser(tiny_flux.velocity, stack)
        v, residual = den.compute(x, sigma)
        assert torch.allclose(den.reuse(x, sigma, residual), v, atol=1e-5)
        v_other = den.reuse(x + 0.5, sigma, residual)
        assert not torch.allclose(v_other, v, atol=1e-3)
        assert den.executions == 1


@torch.no_grad()
def test_residual_differs_from_output_reuse(tiny_flux):
    sigmas, mask = linear_sigmas(10), MASKS[0]
    out = sample(OutputDenoiser(tiny_flux.velocity), tiny_flux.noise, sigmas, mask)
    with stack_hooks(tiny_flux.transformer) as stack:
        res = sample(ResidualDenoiser(tiny_flux.velocity, stack), tiny_flux.noise, sigmas, mask)
    assert not torch.allclose(out, res, atol=1e-4)


def test_hooks_removed_and_state_reset_when_a_call_fails(tiny_flux):
    def broken(x, sigma):
        tiny_flux.velocity(x, sigma)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with stack_hooks(tiny_flux.transformer) as stack:
            ResidualDenoiser(broken, stack).compute(tiny_flux.noise, 0.5)
    assert stack.mode == "compute" and stack.residual is None
    state = install(tiny_flux.transformer)  # installs again cleanly: nothing was left behind
    with pytest.raises(RuntimeError, match="already installed"):
        install(tiny_flux.transformer)
    uninstall(tiny_flux.transformer)
    assert state.executions == 0


def test_reuse_without_cache_and_nan_are_clear_errors(gmm):
    x = gmm.noise(4, 0)
    with pytest.raises(ValueError, match="mask\\[0\\] must be 1"):
        advance(OutputDenoiser(gmm), [State(0, x)], linear_sigmas(4), False, ["repeat"], 1)
    nan_fn = lambda x, s: torch.full_like(x, float("nan"))  # noqa: E731
    with pytest.raises(FloatingPointError, match="non-finite latent after step 0"):
        sample(OutputDenoiser(nan_fn), x, linear_sigmas(4), [1, 0, 1, 0])
    with pytest.raises(ValueError, match="mask has 3 steps"):
        sample(OutputDenoiser(gmm), x, linear_sigmas(4), [1, 0, 1])


def test_unregistered_blocks_are_refused_with_advice():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(ValueError, match="reuse='output'"):
        install(Net())
    with pytest.raises(ValueError, match="no transformer block list"):
        install(torch.nn.Linear(2, 2))
