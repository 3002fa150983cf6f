"""ode.solve, the one adaptive solve behind the ODE samplers and the likelihood, against a linear
ODE with a closed-form solution: dx/dt = -a x, dy/dt = x (so x(t) = x0 e^{-a t},
y(t) = y0 + x0 (1 - e^{-a t}) / a), a state of two tensors as the likelihood uses."""
import math

import pytest
import torch

from sdelib.ode import ODEConvergenceError, solve

A = 3.0


def linear(state, t_vec):
    x, y = state
    return -A * x, x.reshape(x.shape[0], -1).sum(dim=1)


@pytest.mark.parametrize("solver", ["scipy", "torchdiffeq"])
def test_solve_reaches_the_closed_form_with_a_tuple_state(solver):
    x0 = torch.linspace(-1, 2, 6, dtype=torch.float64).reshape(3, 2)
    y0 = torch.zeros(3, dtype=torch.float64)
    (x, y), nfe = solve(linear, (x0, y0), 0.0, 1.0, solver=solver, rtol=1e-9, atol=1e-9)
    decay = math.exp(-A)
    # rtol = atol = 1e-9 on O(1) values: global error ~1e-8; a wrong sign or rate is off by O(1).
    assert (x - x0 * decay).abs().max() < 1e-7
    assert (y - x0.sum(dim=1) * (1 - decay) / A).abs().max() < 1e-7
    assert x.dtype == torch.float64 and y.shape == (3,) and nfe > 10


@pytest.mark.parametrize("solver", ["scipy", "torchdiffeq"])
def test_solve_runs_backwards_in_time(solver):
    x1 = torch.ones(2, 1, dtype=torch.float64)
    (x,), _ = solve(lambda s, t: (-A * s[0],), (x1,), 1.0, 0.0, solver=solver, rtol=1e-9, atol=1e-9)
    assert (x - math.exp(A)).abs().max() < 1e-6


def test_solve_keeps_t_inside_the_interval_and_calls_back():
    seen, steps = [], []

    def record(state, t_vec):
        seen.append(float(t_vec[0]))
        return (-A * state[0],)

    solve(record, (torch.ones(2, 1),), 0.2, 0.7, solver="torchdiffeq")
    assert min(seen) >= 0.2 and max(seen) <= 0.7
    solve(lambda s, t: (-A * s[0],), (torch.ones(2, 1),), 0.2, 0.7, solver="scipy",
          callback=lambda i, t, state: steps.append((i, t)))
    assert [i for i, _ in steps] == list(range(len(steps))) and steps[-1][1] == pytest.approx(0.7)


@pytest.mark.parametrize("solver,method,match", [("euler", None, "unknown solver"),
                                                 ("scipy", "dopri5", "unknown scipy method")])
def test_solve_rejects_unknown_solvers_and_methods(solver, method, match):
    with pytest.raises(ValueError, match=match):
        solve(linear, (torch.ones(1, 1), torch.zeros(1)), 0.0, 1.0, solver=solver, method=method)


def test_solve_reports_a_non_finite_drift_with_the_time():
    with pytest.raises(ODEConvergenceError, match="not finite at t="):
        solve(lambda s, t: (s[0] / 0.0,), (torch.ones(1, 1),), 0.0, 1.0)
