"""One adaptive solve of an ODE in a batch of tensors, shared by the ODE samplers and the likelihood.

The probability-flow ODE (Song et al. 2021, eq. 13) is solved by an adaptive Runge–Kutta method in
two places: sampling (`samplers.probability_flow_ode`, from T down to eps) and the likelihood
(`likelihood.ode_likelihood`, from eps up to T, with the divergence integrated alongside). Both
call `solve`, with one of two `solver`s:

- 'scipy': scipy's RK45 (the tutorial's choice; also RK23 or DOP853) on one float64 vector holding
  the whole batch, moved to the CPU at every evaluation;
- 'torchdiffeq': torchdiffeq's dopri5 (the same Dormand–Prince pair), batched on the tensors'
  device and in their dtype (use float64 for tight tolerances on toy data).

Each evaluation is counted (`CountedDrift`): a non-finite value or more than `max_nfe` evaluations
raise `ODEConvergenceError` naming the time reached, so a solve reports instead of hanging.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

__all__ = ["SOLVERS", "ODEConvergenceError", "CountedDrift", "solve"]

SOLVERS = ("scipy", "torchdiffeq")
_SCIPY_METHODS = ("RK45", "RK23", "DOP853")
_DEFAULT_METHOD = {"scipy": "RK45", "torchdiffeq": "dopri5"}


class ODEConvergenceError(RuntimeError):
    """The adaptive ODE solver failed or exceeded its evaluation budget."""


class CountedDrift:
    """Wraps fn(state, t_vec) for an adaptive solver: counts evaluations (`nfe`) and raises
    ODEConvergenceError past `max_nfe` or on a non-finite value, so a solve reports, never hangs."""

    def __init__(self, fn, max_nfe: int, what: str = "probability-flow ODE"):
        self.fn, self.max_nfe, self.what, self.nfe = fn, max_nfe, what, 0

    def __call__(self, state, t_vec):
        self.nfe += 1
        t = float(t_vec[0])
        if self.nfe > self.max_nfe:
            raise ODEConvergenceError(f"{self.what} needed more than {self.max_nfe} evaluations; "
                                      f"stopped at t={t:.4g} (loosen rtol/atol or check the score)")
        out = self.fn(state, t_vec)
        if not all(torch.isfinite(o).all() for o in (out if isinstance(out, tuple) else (out,))):
            raise ODEConvergenceError(f"{self.what} drift is not finite at t={t:.4g}")
        return out


def check_solver(solver: str, method: str | None) -> str:
    """The method to use for `solver` (its default if None); a clear error for unknown names."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SOLVERS}")
    method = method or _DEFAULT_METHOD[solver]
    if solver == "scipy" and method not in _SCIPY_METHODS:
        raise ValueError(f"unknown scipy method {method!r}; choose one of {_SCIPY_METHODS}")
    return method


@torch.no_grad()
def solve(fn: Callable, state: tuple[torch.Tensor, ...], t_start: float, t_end: float, *,
          solver: str = "scipy", method: str | None = None, rtol: float = 1e-5, atol: float = 1e-5,
          max_nfe: int = 20_000, what: str = "probability-flow ODE",
          callback: Callable | None = None) -> tuple[tuple[torch.Tensor, ...], int]:
    """Integrate d(state)/dt = fn(state, t_vec) from t_start to t_end; returns (state, nfe).

    `state` is a tuple of tensors whose first dimension is the batch; `fn` gets the tuple and
    t_vec of shape (batch,) (in the dtype of the first tensor) and returns a tuple of derivatives of the same shapes. `callback(i, t,
    state)` is called after each accepted step (scipy) or at each evaluation (torchdiffeq, which
    has no step hook: this includes Runge–Kutta stages and rejected trial steps)."""
    method = check_solver(solver, method)
    drift = CountedDrift(fn, max_nfe, what)
    batch, device, dtype = state[0].shape[0], state[0].device, state[0].dtype
    low, high = min(t_start, t_end), max(t_start, t_end)
    if solver == "scipy":
        return _solve_scipy(drift, state, t_start, t_end, method, rtol, atol, callback), drift.nfe

    from torchdiffeq import odeint

    def ode_func(t, current):
        # dopri5's first-step heuristic may probe beyond the interval: keep t inside it.
        t_vec = t.clamp(min=low, max=high).expand(batch).to(dtype)
        out = drift(current, t_vec)
        if callback is not None:
            callback(drift.nfe - 1, float(t_vec[0]), current)
        return out

    times = torch.tensor([t_start, t_end], device=device, dtype=dtype)
    try:
        path = odeint(ode_func, tuple(s.detach() for s in state), times, rtol=rtol, atol=atol,
                      method=method)
    except AssertionError as exc:  # torchdiffeq asserts on step-size underflow / non-finite steps
        raise ODEConvergenceError(f"{what} failed after {drift.nfe} evaluations: {exc}") from exc
    return tuple(p[-1] for p in path), drift.nfe


def _solve_scipy(drift, state, t_start, t_end, method, rtol, atol, callback):
    """The scipy path: the state tuple flattened into one float64 vector and back."""
    from scipy import integrate

    shapes, dtypes = [s.shape for s in state], [s.dtype for s in state]
    sizes = [s.numel() for s in state]
    device, dtype = state[0].device, state[0].dtype
    batch = shapes[0][0]

    def unflatten(y):
        parts = np.split(y, np.cumsum(sizes)[:-1])
        return tuple(torch.as_tensor(p, device=device, dtype=part_dtype).reshape(shape)
                     for p, shape, part_dtype in zip(parts, shapes, dtypes))

    def ode_func(t, y):
        out = drift(unflatten(y), torch.full((batch,), t, device=device, dtype=dtype))
        return np.concatenate([o.reshape(-1).double().cpu().numpy() for o in out])

    y0 = np.concatenate([s.reshape(-1).double().cpu().numpy() for s in state])
    solver = getattr(integrate, method)(ode_func, t_start, y0, t_end, rtol=rtol, atol=atol)
    i = 0
    while solver.status == "running":
        message = solver.step()
        if solver.status == "failed":
            raise ODEConvergenceError(f"{drift.what} failed at t={solver.t:.4g}: {message}")
        if callback is not None:
            callback(i, solver.t, unflatten(solver.y))
        i += 1
    return unflatten(solver.y)
