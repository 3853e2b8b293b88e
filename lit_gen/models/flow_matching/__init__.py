"""Flow matching: probability paths, the FlowMatching module (ODE solvers and the ODE likelihood live in
lit_gen.integrate, shared with other continuous-time families)."""

from lit_gen.models.flow_matching.module import FlowMatching
from lit_gen.models.flow_matching.paths import PATHS, StraightPath, VariancePreservingPath

__all__ = ["FlowMatching", "PATHS", "StraightPath", "VariancePreservingPath"]
