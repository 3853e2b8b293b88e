"""ODE solvers, divergence estimators and the instantaneous change of variables: plain functions on a floor
below the families that integrate a velocity field (flow matching; a diffusion's probability-flow ODE).

This package imports only torch, :mod:`lit_gen.core` and :mod:`lit_gen.errors`.
"""

from lit_gen.integrate.divergence import exact_divergence, hutchinson_divergence, rademacher_probes
from lit_gen.integrate.likelihood import (
    LogDensityChange,
    ODELikelihood,
    log_density_change,
    standard_normal_log_prob,
)
from lit_gen.integrate.ode import (
    ADAPTIVE_SOLVERS,
    FIXED_STEP_SOLVERS,
    SOLVERS,
    Solution,
    dopri5,
    euler,
    heun,
    midpoint,
    rk4,
    solve,
    time_grid,
)

__all__ = [
    "ADAPTIVE_SOLVERS", "FIXED_STEP_SOLVERS", "LogDensityChange", "ODELikelihood", "SOLVERS", "Solution", "dopri5", "euler",
    "exact_divergence", "heun", "hutchinson_divergence", "log_density_change", "midpoint", "rademacher_probes",
    "rk4", "solve", "standard_normal_log_prob", "time_grid",
]
