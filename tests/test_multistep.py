"""The native UniPC and DPM-Solver++: diffusers' step exactly, differentiable in the sigmas, resumable."""

import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from budcache.plan import PlanError
from budcache.sampling.denoisers import OutputDenoiser
from budcache.sampling.loop import State, advance, sample
from budcache.sampling.multistep import DPMSolver, UniPC, differentiable
from budcache.sampling.reschedule import with_sigmas
from budcache.sampling.solver import Euler, SchedulerSolver
from tests.fixtures.tiny import wan_scheduler

FLOW = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0}
CONFIGS = {
    "wan": wan_scheduler,
    "unipc-1": lambda: UniPCMultistepScheduler(solver_order=1, **FLOW),
    "unipc-3": lambda: UniPCMultistepScheduler(solver_order=3, **FLOW),
    "unipc-no-corrector": lambda: UniPCMultistepScheduler(disable_corrector=list(range(20)), **FLOW),
    "unipc-3-corrector-off-at-0-2-5": lambda: UniPCMultistepScheduler(
        solver_order=3, disable_corrector=[0, 2, 5], **FLOW
    ),
    # a last sigma > 0 makes the last corrector count (at 0 the last step returns x0 of the uncorrected latent)
    "unipc-3-sigma-min": lambda: UniPCMultistepScheduler(solver_order=3, final_sigmas_type="sigma_min", **FLOW),
    # with a last sigma of 0, diffusers' order-2 last step is inf: its sigma_min schedule repeats the last sigma
    "unipc-lower-order-final-off": lambda: UniPCMultistepScheduler(
        lower_order_final=False, final_sigmas_type="sigma_min", **FLOW
    ),
    "sana": lambda: DPMSolverMultistepScheduler(**FLOW),  # as tests/fixtures/tiny_families.py ships it
    "dpm-1": lambda: DPMSolverMultistepScheduler(solver_order=1, **FLOW),
    "dpm-3": lambda: DPMSolverMultistepScheduler(solver_order=3, **FLOW),
    "dpm-heun": lambda: DPMSolverMultistepScheduler(solver_type="heun", **FLOW),
    "dpm-3-lower-order-final-off": lambda: DPMSolverMultistepScheduler(solver_order=3, lower_order_final=False, **FLOW),
    "dpm-sigma-min": lambda: DPMSolverMultistepScheduler(final_sigmas_type="sigma_min", **FLOW),
    "dpm-3-euler-at-final": lambda: DPMSolverMultistepScheduler(
        solver_order=3, euler_at_final=True, final_sigmas_type="sigma_min", **FLOW
    ),
}
W = torch.randn(4, 4, generator=torch.Generator().manual_seed(0)) / 2


def velocity(x: torch.Tensor, sigma) -> torch.Tensor:
    """A smooth nonlinear stand-in for a model (sigma: a float or a tensor)."""
    return torch.tanh(x @ W.to(x.dtype)) * (1 + sigma) - 0.7 * x + sigma


def scheduler(config: str, steps: int, pinned: bool = False) -> object:
    """A configured scheduler; ``pinned``: its interior sigmas moved (by up to a third of the gap to
    either neighbour, so still decreasing) and set as budcache/hooks/plan_hook.py pins a plan's."""
    s = CONFIGS[config]()
    s.set_timesteps(steps)
    if pinned:
        sigmas = s.sigmas.double()
        u = torch.rand(steps - 1, generator=torch.Generator().manual_seed(steps), dtype=torch.float64) * 2 - 1
        gaps = torch.where(u > 0, sigmas[:-2] - sigmas[1:-1], sigmas[1:-1] - sigmas[2:])
        s.sigmas = torch.cat([sigmas[:1], sigmas[1:-1] + u * gaps / 3, sigmas[-1:]]).float()
    return s


def cached_mask(steps: int) -> list[int]:
    return [1 if k < 2 or k % 3 == 0 else 0 for k in range(steps)]


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("steps", [6, 12, 20])
@pytest.mark.parametrize("config", CONFIGS)
def test_equals_the_scheduler_step(config, steps):
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(steps))
    for pinned in (False, True):
        reference = SchedulerSolver(scheduler(config, steps, pinned))
        native = differentiable(reference, torch.tensor(reference.sigmas))
        assert type(native) is (UniPC if config.startswith(("wan", "unipc")) else DPMSolver)
        for mask, rule in [
            ([1] * steps, "repeat"),
            (cached_mask(steps), "repeat"),
            (cached_mask(steps), "extrapolate"),
        ]:
            want = sample(OutputDenoiser(velocity), x, reference, mask, rule)
            got = sample(OutputDenoiser(velocity), x, native, mask, rule)
            assert relative(got, want) <= 1e-5, (pinned, mask, rule)


def test_unipc_lower_order_final_off_to_zero_is_as_infinite_as_diffusers():
    s = UniPCMultistepScheduler(lower_order_final=False, **FLOW)
    s.set_timesteps(6)
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    for solver in (SchedulerSolver(s), differentiable(SchedulerSolver(s), s.sigmas.clone())):
        assert not torch.isfinite(sample(OutputDenoiser(velocity), x, solver, [1] * 6, check_finite=False)).all()


GRADIENT_CASES = [
    (c, m)
    for c in (
        "wan",
        "unipc-3",
        "unipc-3-corrector-off-at-0-2-5",
        "sana",
        "dpm-3",
        "dpm-heun",
        "dpm-3-lower-order-final-off",
    )
    for m in ("full", "extrapolate")
]


def _loss_of(config: str, mask: str, steps: int = 6):
    """A scalar of the final float64 latent as a function of all K+1 sigmas, and the schedule."""
    reference = SchedulerSolver(scheduler(config, steps))
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weights = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    mask, rule = ([1] * steps, "repeat") if mask == "full" else (cached_mask(steps), mask)

    def loss(sigmas: torch.Tensor) -> torch.Tensor:
        solver = differentiable(reference, sigmas)
        return (sample(OutputDenoiser(velocity), x, solver, mask, rule) * weights).sum()

    return loss, torch.tensor(reference.sigmas, dtype=torch.float64)


@pytest.mark.parametrize(("config", "mask"), GRADIENT_CASES)
def test_gradient_matches_finite_differences(config, mask):
    loss, sigmas = _loss_of(config, mask)
    interior = sigmas[1:-1].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda s: loss(torch.cat([sigmas[:1], s, sigmas[-1:]])), (interior,), eps=1e-6, atol=1e-6, rtol=1e-4
    )


@pytest.mark.parametrize(("config", "mask"), GRADIENT_CASES)
def test_gradient_is_finite_for_every_sigma_and_exact_at_the_last(config, mask):
    """The last step reaches sigma 0 (log 0 = -inf in diffusers' form): still finite gradients; the
    one with respect to the last sigma matches a one-sided difference (the loss is linear in it)."""
    loss, sigmas = _loss_of(config, mask)
    leaf = sigmas.clone().requires_grad_()
    loss(leaf).backward()
    assert sigmas[-1] == 0 and torch.isfinite(leaf.grad).all()
    eps = 1e-7
    moved = sigmas.clone()
    moved[-1] = eps
    difference = float(loss(moved) - loss(sigmas)) / eps
    assert float(leaf.grad[-1]) == pytest.approx(difference, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("config", ["wan", "unipc-3-corrector-off-at-0-2-5", "sana", "dpm-3"])
def test_resumes_from_a_stored_state(config):
    steps = 8
    solver = differentiable(SchedulerSolver(scheduler(config, steps)), scheduler(config, steps).sigmas.clone())
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(3))
    mask, stored = cached_mask(steps), {}
    full = sample(
        OutputDenoiser(velocity),
        x,
        solver,
        mask,
        "extrapolate",
        callback=lambda info: stored.setdefault(info.step + 1, info.state),
    )
    for k in (1, 3, 5):
        first = sample(OutputDenoiser(velocity), x, solver, mask, "extrapolate", start=stored[k])
        again = sample(OutputDenoiser(velocity), x, solver, mask, "extrapolate", start=stored[k])
        assert torch.equal(first, again) and torch.equal(first, full)
    state = stored[4]
    before = [t.clone() for t in state.solver["outputs"]]
    v = velocity(state.x, solver.sigmas[4])
    one, two = solver.step(4, state.x, v, state.solver), solver.step(4, state.x, v, state.solver)
    assert torch.equal(one[0], two[0]) and all(torch.equal(a, b) for a, b in zip(state.solver["outputs"], before))


@pytest.mark.parametrize("config", ["wan", "unipc-3-corrector-off-at-0-2-5", "dpm-3"])
def test_steps_several_trajectories_together(config):
    steps, depth = 8, 2
    solver = differentiable(SchedulerSolver(scheduler(config, steps)), scheduler(config, steps).sigmas.clone())
    gen = torch.Generator().manual_seed(4)
    alone = [State(0, torch.randn(n, 3, 4, generator=gen)) for n in (1, 2, 3)]
    together = list(alone)
    rules = ["repeat", "extrapolate", "repeat"]
    denoiser = OutputDenoiser(velocity)
    for compute in cached_mask(steps):
        together, _ = advance(denoiser, together, solver, bool(compute), rules, depth)
        alone = [advance(denoiser, [s], solver, bool(compute), [r], depth)[0][0] for s, r in zip(alone, rules)]
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.x, b.x, rtol=1e-6, atol=1e-6)


def test_differentiable_keeps_euler_and_native_solvers():
    sigmas = torch.linspace(1, 0, 5, dtype=torch.float64)
    assert isinstance(differentiable(Euler([1.0, 0.5, 0.0]), sigmas), Euler)
    unipc = differentiable(UniPC([1.0, 0.5, 0.0], order=3, disable_corrector=[1]), sigmas)
    assert unipc.sigmas is sigmas and (unipc.order, list(unipc.disable_corrector)) == (3, [1])
    assert differentiable(DPMSolver([1.0, 0.0], solver_type="heun"), sigmas).solver_type == "heun"
    moved = with_sigmas(unipc, [1.0, 0.3, 0.0])
    assert isinstance(moved, UniPC) and moved.sigmas == [1.0, 0.3, 0.0] and moved.order == 3


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: DPMSolverSinglestepScheduler(**FLOW), r"DPMSolverSinglestepScheduler$"),
        (lambda: UniPCMultistepScheduler(solver_type="bh1", **FLOW), r"UniPCMultistepScheduler \(solver_type='bh1'\)"),
        (
            lambda: UniPCMultistepScheduler(),
            r"UniPCMultistepScheduler \(prediction_type='epsilon', use_flow_sigmas=False",
        ),
        (
            lambda: DPMSolverMultistepScheduler(algorithm_type="sde-dpmsolver++", **FLOW),
            r"DPMSolverMultistepScheduler \(algorithm_type='sde-dpmsolver\+\+'\)",
        ),
        (lambda: FlowMatchEulerDiscreteScheduler(stochastic_sampling=True), r"FlowMatchEulerDiscreteScheduler$"),
    ],
)
def test_refuses_other_steps_in_one_line(make, named):
    s = make()
    s.set_timesteps(4)
    with pytest.raises(
        PlanError,
        match=r"^stage 2 differentiates through Euler, UniPC \(bh2, flow\) and "
        r"DPM-Solver\+\+ multistep \(flow\); this source steps with " + named,
    ) as error:
        differentiable(SchedulerSolver(s), s.sigmas.clone())
    assert "\n" not in str(error.value)
