"""The loop's solver step: how a velocity moves the latent from ``sigma[k]`` to ``sigma[k+1]``.

:class:`Euler` is ``x + (sigma[k+1] - sigma[k]) * v`` over any schedule (also a differentiable
tensor: stage 2). :class:`SchedulerSolver` runs a diffusers scheduler's own ``step`` (UniPC with or
without its corrector, DPM-Solver++ multistep or singlestep, ...) on a snapshot of the
scheduler's state: multistep history, corrector inputs, lower-order bookkeeping, step index.
The snapshot travels with the loop's state, so a trajectory resumed from a stored prefix continues
exactly where it would have been, and several trajectories can step together (their snapshots
concatenated along the batch).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol

import torch

# A scheduler's attributes that `set_timesteps` fixes and `step` never changes: not part of a snapshot.
_STATIC = frozenset(
    {
        "sigmas",
        "timesteps",
        "betas",
        "alphas",
        "alphas_cumprod",
        "alpha_t",
        "sigma_t",
        "lambda_t",
        "order_list",
        "num_inference_steps",
        "init_noise_sigma",
        "_internal_dict",
        "config",
        "solver_p",
    }
)


class Solver(Protocol):
    # read-only members: each solver may hold its sigmas as a list or a tensor
    @property
    def name(self) -> str: ...

    @property
    def sigmas(self) -> Sequence[float] | torch.Tensor: ...  # K + 1 values

    def step(self, k: int, x: torch.Tensor, v: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]: ...


class Euler:
    """The Euler step over ``sigmas`` (K+1 values; floats, or a tensor to differentiate through)."""

    name = "Euler"

    def __init__(self, sigmas: Sequence[float] | torch.Tensor):
        self.sigmas = sigmas if torch.is_tensor(sigmas) else [float(s) for s in sigmas]

    def step(self, k: int, x: torch.Tensor, v: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return x + (self.sigmas[k + 1] - self.sigmas[k]) * v, None


class AB2:
    """Two-step Adams-Bashforth in sigma over ``sigmas`` (k-diffusion style; Euler on the first step): the
    velocity of the previous step is its state, x_{k+1} = x_k + h_k (v_k + h_k / (2 h_{k-1}) (v_k - v_{k-1}))."""

    name = "AB2"

    def __init__(self, sigmas: Sequence[float] | torch.Tensor):
        self.sigmas = [float(s) for s in sigmas]

    def step(self, k: int, x: torch.Tensor, v: torch.Tensor, state: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        s, h = self.sigmas, self.sigmas[k + 1] - self.sigmas[k]
        slope = v if state is None else v + (h / (2 * (s[k] - s[k - 1]))) * (v - state)
        return x + h * slope, v


def _tensors(value: Any) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def state_bytes(state: Any) -> int:
    """Bytes held by the tensors of a solver state."""
    return sum(t.nbytes for t in _tensors(state))


class SchedulerSolver:
    """A configured diffusers scheduler (``set_timesteps`` already called) as the loop's step.

    ``step(k, x, v, state)`` restores ``state`` (a snapshot of the scheduler's changing attributes;
    None before step 0) onto a private copy of the scheduler, calls its ``step`` with the
    timestep of step k, and returns the new latent and the new snapshot."""

    def __init__(self, scheduler: Any):
        self.scheduler = copy.deepcopy(scheduler)
        self.name = type(scheduler).__name__.removesuffix("Scheduler")
        self.sigmas = [float(s) for s in self.scheduler.sigmas]
        self.timesteps = self.scheduler.timesteps
        if len(self.timesteps) != len(self.sigmas) - 1:
            raise ValueError(
                f"{type(scheduler).__name__} holds {len(self.timesteps)} timesteps and "
                f"{len(self.sigmas)} sigmas; call set_timesteps before wrapping it"
            )
        self.initial = self._snapshot()

    def _snapshot(self) -> dict:
        return {k: list(v) if isinstance(v, list) else v for k, v in vars(self.scheduler).items() if k not in _STATIC}

    def _restore(self, state: dict) -> None:
        vars(self.scheduler).update({k: list(v) if isinstance(v, list) else v for k, v in state.items()})

    def step(self, k: int, x: torch.Tensor, v: torch.Tensor, state: dict | None) -> tuple[torch.Tensor, dict]:
        self._restore(self.initial if state is None else state)
        self.scheduler._step_index = k
        out = self.scheduler.step(v.to(x.dtype), self.timesteps[k], x, return_dict=False)[0]
        return out.to(x.dtype), self._snapshot()


class Retimed:
    """``solver`` whose model is told ``model_sigmas[k]`` at step k instead of the step's own sigma
    (LD3's decoupled model times: K values, floats or a tensor); the step itself is ``solver``'s."""

    def __init__(self, solver: Solver, model_sigmas: Sequence[float] | torch.Tensor):
        self.solver, self.model_sigmas = solver, model_sigmas
        self.name, self.sigmas = solver.name, solver.sigmas

    def step(self, k: int, x: torch.Tensor, v: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self.solver.step(k, x, v, state)


def model_sigma(solver: Solver, k: int) -> Any:
    """The noise level the model is told at step k: the step's sigma unless the solver is :class:`Retimed`."""
    told = getattr(solver, "model_sigmas", None)
    return solver.sigmas[k] if told is None else told[k]


def deterministic_euler(scheduler: Any) -> bool:
    """Whether ``scheduler`` steps exactly as :class:`Euler` does: a FlowMatchEuler without stochastic sampling."""
    return type(scheduler).__name__ == "FlowMatchEulerDiscreteScheduler" and not scheduler.config.get(
        "stochastic_sampling", False
    )


def solver_for(scheduler: Any) -> Solver:
    """The loop's step for a configured diffusers scheduler: Euler over its sigmas for a
    deterministic FlowMatchEuler (the exact equivalent of its step), else its own step."""
    return Euler(scheduler.sigmas.tolist()) if deterministic_euler(scheduler) else SchedulerSolver(scheduler)


def as_solver(sigmas_or_solver: Any) -> Solver:
    """A solver as it is, or Euler over a schedule."""
    return sigmas_or_solver if hasattr(sigmas_or_solver, "step") else Euler(sigmas_or_solver)


def cat_states(states: Sequence[Any], sizes: Sequence[int]) -> tuple[Any, list[str]]:
    """The snapshots of several trajectories (``sizes[i]`` rows each) as one, along the batch;
    returns it and the names of the attributes that were concatenated."""
    if states[0] is None:
        return None, []
    out, joined = {}, []
    for key, first in states[0].items():
        values = [s[key] for s in states]
        if torch.is_tensor(first) and first.dim() > 0 and first.shape[0] == sizes[0]:
            out[key], joined = torch.cat(values), [*joined, key]
        elif isinstance(first, list):
            out[key] = [
                torch.cat(items)
                if torch.is_tensor(items[0]) and items[0].dim() > 0 and items[0].shape[0] == sizes[0]
                else items[0]
                for items in zip(*values)
            ]
            joined.append(key)
        else:
            out[key] = first
    return out, joined


def split_state(state: Any, joined: list[str], sizes: Sequence[int]) -> list[Any]:
    """The inverse of :func:`cat_states` for a state after the step."""
    if state is None:
        return [None] * len(sizes)
    total = sum(sizes)
    parts = [dict(state) for _ in sizes]
    for key in joined:
        value = state[key]
        if torch.is_tensor(value):
            for p, piece in zip(parts, value.split(list(sizes))):
                p[key] = piece
        else:
            columns = [
                item.split(list(sizes))
                if torch.is_tensor(item) and item.dim() > 0 and item.shape[0] == total
                else [item] * len(sizes)
                for item in value
            ]
            for i, p in enumerate(parts):
                p[key] = [c[i] for c in columns]
    return parts
