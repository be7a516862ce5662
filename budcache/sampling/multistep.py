"""Differentiable multistep solvers: UniPC and DPM-Solver++ for flow models, in torch.

:class:`UniPC` and :class:`DPMSolver` step as diffusers' ``UniPCMultistepScheduler`` (bh2, data
prediction) and ``DPMSolverMultistepScheduler`` (DPM-Solver++) step with
``prediction_type="flow_prediction"`` and ``use_flow_sigmas=True`` over the same sigmas, by the
same floating-point operations (float32 results agree bit for bit), but every coefficient is a torch
function of ``sigmas``, so that stage 2 can learn a schedule through them. The step to sigma 0,
where diffusers relies on ``log 0 = -inf``, takes the value the scheduler reaches there in a form
with finite gradients.
:func:`differentiable` gives a loop's solver over a sigma tensor.

A state (None before step 0) is a dict: ``outputs``, the data predictions ``x - sigma * v`` of
the last steps (oldest first), and for UniPC ``last``, the latent its corrector revisits (None
where it is disabled). Tensors have the batch first, so :func:`~.solver.cat_states` joins
trajectories; a state is never changed in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..errors import PlanError
from .solver import Euler, SchedulerSolver, Solver, deterministic_euler

SUPPORTED = "stage 2 differentiates through Euler, UniPC (bh2, flow) and DPM-Solver++ multistep (flow)"
_FLOW = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "thresholding": False}
# The settings under which a scheduler's step is the native solver's.
_REQUIRED = {
    "UniPCMultistepScheduler": {**_FLOW, "solver_type": "bh2", "predict_x0": True, "solver_p": None},
    "DPMSolverMultistepScheduler": {**_FLOW, "algorithm_type": "dpmsolver++"},
}
DIFFERENTIABLE = ("FlowMatchEulerDiscreteScheduler", *_REQUIRED)  # the scheduler classes stage 2 can step like


def _table(sigmas: Sequence[float] | torch.Tensor) -> torch.Tensor:
    return sigmas if torch.is_tensor(sigmas) else torch.tensor([float(s) for s in sigmas], dtype=torch.float64)


def _lambda(sigma: torch.Tensor) -> torch.Tensor:
    """The half log-SNR of a flow sigma: log(alpha) - log(sigma) with alpha = 1 - sigma."""
    return torch.log(1 - sigma) - torch.log(sigma)


def _to_zero(sigma_t: torch.Tensor, sigma_s: torch.Tensor) -> torch.Tensor:
    """exp(-h) - 1 of a step from ``sigma_s`` to ``sigma_t`` = 0 (h = inf, so -1), written as
    ``sigma_t alpha_s / (alpha_t sigma_s) - 1``: equal for every ``sigma_t``, finite gradients at 0."""
    return sigma_t * (1 - sigma_s) / ((1 - sigma_t) * sigma_s) - 1


@dataclass
class UniPC:
    """UniPC (B(h) = e^h - 1, "bh2"; predicting x0) as diffusers' ``UniPCMultistepScheduler`` steps
    a flow model: order ``order`` after warm-up (1 at the last step with ``lower_order_final``),
    its corrector at the start of every step except after those in ``disable_corrector``."""

    sigmas: Sequence[float] | torch.Tensor  # K + 1 values; floats are taken in float64
    order: int = 2
    lower_order_final: bool = True
    disable_corrector: Collection[int] = ()
    name: ClassVar[str] = "UniPCMultistep"
    _s: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        if self.order < 1:
            raise ValueError(f"UniPC's order is at least 1, not {self.order}")
        self.sigmas = self.sigmas if torch.is_tensor(self.sigmas) else [float(s) for s in self.sigmas]
        self._s = _table(self.sigmas)

    def with_sigmas(self, sigmas: Sequence[float] | torch.Tensor) -> UniPC:
        return dataclasses.replace(self, sigmas=sigmas)

    def _cap(self, k: int) -> int:
        """The order step k takes once warmed up."""
        return min(self.order, len(self._s) - 1 - k) if self.lower_order_final else self.order

    def step(self, k: int, x: torch.Tensor, v: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        outputs, last = (state["outputs"], state["last"]) if state else ([], None)
        m = x - self._s[k] * v.to(x.dtype)
        if last is not None:  # UniC of step k-1, at its order: min(cap, warm-up), the warm-up being len(outputs)
            x = self._update(k - 1, last, outputs, min(self._cap(k - 1), len(outputs)), m)
        history = [*outputs, m]
        x_next = self._update(k, x, history, min(self._cap(k), len(history)))
        state = {"outputs": history[-self.order :], "last": None if k in self.disable_corrector else x}
        return x_next, state

    def _update(
        self, k: int, x: torch.Tensor, outputs: list[torch.Tensor], order: int, corrected: torch.Tensor | None = None
    ) -> torch.Tensor:
        """UniP from sigma[k] to sigma[k+1] with ``outputs[-1 - i]`` the data prediction at sigma[k - i];
        with ``corrected``, the data prediction at sigma[k+1], UniC instead (diffusers'
        ``multistep_uni_p_bh_update`` / ``multistep_uni_c_bh_update``)."""
        s = self._s
        sigma_t, sigma_s0, m0 = s[k + 1], s[k], outputs[-1]
        alpha_t = 1 - sigma_t
        if corrected is None and order == 1 and float(sigma_t) == 0:
            return (sigma_t / sigma_s0 * x - alpha_t * _to_zero(sigma_t, sigma_s0) * m0).to(x.dtype)
        lambda_s0 = _lambda(sigma_s0)
        h = _lambda(sigma_t) - lambda_s0
        b_h = torch.expm1(-h)  # also h * phi_1(h)
        x_t = sigma_t / sigma_s0 * x - alpha_t * b_h * m0
        if corrected is None and order == 1:
            return x_t.to(x.dtype)
        rks, d1s = [], []
        for i in range(1, order):
            rks.append((_lambda(s[k - i]) - lambda_s0) / h)
            d1s.append((outputs[-(i + 1)] - m0) / rks[-1])
        if corrected is None:
            rhos = _rhos(rks, -h, b_h)
            res = sum(rho * d for rho, d in zip(rhos, d1s))
        else:
            rhos = _rhos([*rks, torch.ones((), dtype=h.dtype, device=h.device)], -h, b_h)
            res = sum(rho * d for rho, d in zip(rhos[:-1], d1s)) + rhos[-1] * (corrected - m0)
        return (x_t - alpha_t * b_h * res).to(x.dtype)


def _rhos(rks: list[torch.Tensor], hh: torch.Tensor, b_h: torch.Tensor) -> torch.Tensor:
    """UniPC's weights of the differences: 0.5 for one, else the solution of
    ``sum_j rho_j rks_j^i = b_i`` (``rks``: the steps' ratios to h; ``hh`` = -h)."""
    if len(rks) == 1:
        return torch.full((1,), 0.5, dtype=hh.dtype, device=hh.device)
    h_phi_k, factorial, b = b_h / hh - 1, 1, []
    for i in range(1, len(rks) + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    ratios = torch.stack(rks)
    return torch.linalg.solve(torch.stack([torch.pow(ratios, i) for i in range(len(rks))]), torch.stack(b))


@dataclass
class DPMSolver:
    """DPM-Solver++ (multistep, ``solver_type`` "midpoint" or "heun") as diffusers'
    ``DPMSolverMultistepScheduler`` steps a flow model; its lower-order steps at the end follow
    ``lower_order_final``, ``euler_at_final`` and ``final_sigmas_type`` as the scheduler's do."""

    sigmas: Sequence[float] | torch.Tensor  # K + 1 values; floats are taken in float64
    order: int = 2
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    final_sigmas_type: str = "zero"
    name: ClassVar[str] = "DPMSolverMultistep"
    _s: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        if self.order not in (1, 2, 3) or self.solver_type not in ("midpoint", "heun"):
            raise ValueError(
                f"DPM-Solver++ takes order 1, 2 or 3 and solver_type 'midpoint' or 'heun', not "
                f"{self.order} and {self.solver_type!r}"
            )
        self.sigmas = self.sigmas if torch.is_tensor(self.sigmas) else [float(s) for s in self.sigmas]
        self._s = _table(self.sigmas)

    def with_sigmas(self, sigmas: Sequence[float] | torch.Tensor) -> DPMSolver:
        return dataclasses.replace(self, sigmas=sigmas)

    def _order(self, k: int, warm: int) -> int:
        """The order of step k after ``warm`` earlier steps (the scheduler's ``lower_order_nums``)."""
        steps = len(self._s) - 1
        short = self.lower_order_final and steps < 15
        if k == steps - 1 and (self.euler_at_final or short or self.final_sigmas_type == "zero"):
            return 1
        if k == steps - 2 and short:
            return min(self.order, warm + 1, 2)
        return min(self.order, warm + 1)

    def step(self, k: int, x: torch.Tensor, v: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        outputs = state["outputs"] if state else []
        history = [*outputs, x - self._s[k] * v.to(x.dtype)]
        order = self._order(k, len(outputs))  # len(outputs): lower_order_nums wherever the order depends on it
        sample = x.to(torch.promote_types(x.dtype, torch.float32))  # the scheduler's upcast (float64 stays)
        update = (self._first, self._second, self._third)[order - 1]
        return update(k, sample, history).to(x.dtype), {"outputs": history[max(0, len(history) - self.order + 1) :]}

    def _first(self, k: int, x: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
        sigma_t, sigma_s = self._s[k + 1], self._s[k]
        if float(sigma_t) == 0:
            phi = _to_zero(sigma_t, sigma_s)
        else:
            phi = torch.exp(-(_lambda(sigma_t) - _lambda(sigma_s))) - 1.0
        return (sigma_t / sigma_s) * x - ((1 - sigma_t) * phi) * outputs[-1]

    def _second(self, k: int, x: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
        sigma_t, sigma_s0, sigma_s1 = self._s[k + 1], self._s[k], self._s[k - 1]
        alpha_t = 1 - sigma_t
        lambda_t, lambda_s0, lambda_s1 = _lambda(sigma_t), _lambda(sigma_s0), _lambda(sigma_s1)
        m0, m1 = outputs[-1], outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (1.0 / r0) * (m0 - m1)
        x_t = (sigma_t / sigma_s0) * x - (alpha_t * (torch.exp(-h) - 1.0)) * d0
        if self.solver_type == "midpoint":
            return x_t - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
        return x_t + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1

    def _third(self, k: int, x: torch.Tensor, outputs: list[torch.Tensor]) -> torch.Tensor:
        sigma_t, sigma_s0 = self._s[k + 1], self._s[k]
        alpha_t = 1 - sigma_t
        lambda_t, lambda_s0, lambda_s1, lambda_s2 = (_lambda(self._s[k + 1 - i]) for i in range(4))
        m0, m1, m2 = outputs[-1], outputs[-2], outputs[-3]
        h, h_0, h_1 = lambda_t - lambda_s0, lambda_s0 - lambda_s1, lambda_s1 - lambda_s2
        r0, r1 = h_0 / h, h_1 / h
        d1_0, d1_1 = (1.0 / r0) * (m0 - m1), (1.0 / r1) * (m1 - m2)
        d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
        d2 = (1.0 / (r0 + r1)) * (d1_0 - d1_1)
        return (
            (sigma_t / sigma_s0) * x
            - (alpha_t * (torch.exp(-h) - 1.0)) * m0
            + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1
            - (alpha_t * ((torch.exp(-h) - 1.0 + h) / h**2 - 0.5)) * d2
        )


def _setting(scheduler: Any, key: str) -> Any:
    return vars(scheduler)[key] if key in vars(scheduler) else scheduler.config.get(key)


def _mismatch(scheduler: Any) -> list[str] | None:
    """None where ``scheduler``'s step is a native solver's, else the settings that differ (none: the class)."""
    required = _REQUIRED.get(type(scheduler).__name__)
    if required is None:
        return []
    off = [f"{key}={_setting(scheduler, key)!r}" for key, want in required.items() if _setting(scheduler, key) != want]
    if type(scheduler).__name__ == "DPMSolverMultistepScheduler" and scheduler.config.solver_order > 3:
        off.append(f"solver_order={scheduler.config.solver_order}")
    return off or None


def refusal(scheduler: Any) -> str | None:
    """Why stage 2 cannot differentiate ``scheduler``'s step (one line), or None where it can."""
    if deterministic_euler(scheduler):
        return None
    off = _mismatch(scheduler)
    if off is None:
        return None
    return f"{SUPPORTED}; this source steps with {type(scheduler).__name__}" + (f" ({', '.join(off)})" if off else "")


def native(solver: SchedulerSolver, sigmas: Sequence[float] | torch.Tensor) -> Solver | None:
    """The native equal of ``solver``'s step over ``sigmas`` (K+1 values, floats or a tensor): Euler for a
    deterministic FlowMatchEuler, UniPC (bh2) or DPM-Solver++ multistep for a flow model; None for any other
    scheduler (exactly where :func:`refusal` gives a reason)."""
    scheduler = solver.scheduler
    if refusal(scheduler) is not None:
        return None
    config = scheduler.config
    if type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler":
        return Euler(sigmas)
    if type(scheduler).__name__ == "UniPCMultistepScheduler":
        return UniPC(sigmas, config.solver_order, config.lower_order_final, list(scheduler.disable_corrector))
    return DPMSolver(
        sigmas,
        config.solver_order,
        config.solver_type,
        config.lower_order_final,
        config.euler_at_final,
        config.final_sigmas_type,
    )


def differentiable(solver: Solver, sigmas: torch.Tensor) -> Solver:
    """``solver``'s step over ``sigmas`` (K+1 values), differentiable in them: Euler, a native
    solver, or the native equal of a :class:`~.solver.SchedulerSolver` (:func:`native`); a
    :class:`~budcache.errors.PlanError` for any other step."""
    if isinstance(solver, Euler):
        return Euler(sigmas)
    if isinstance(solver, (UniPC, DPMSolver)):
        return solver.with_sigmas(sigmas)
    if isinstance(solver, SchedulerSolver):
        step = native(solver, sigmas)
        if step is not None:
            return step
        raise PlanError(refusal(solver.scheduler))
    raise PlanError(f"{SUPPORTED}; this source steps with {getattr(solver, 'name', type(solver).__name__)}")


def require_differentiable(solver: Solver) -> None:
    """Refuse, in one line and before any work, a step stage 2 cannot differentiate."""
    differentiable(solver, torch.tensor([float(s) for s in solver.sigmas], dtype=torch.float64))
