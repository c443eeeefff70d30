"""The AlphaDecay options and their validators now live in `alphaspec.maps.spec`; this keeps the old import path."""

from .maps.spec import DecayMapError, DecaySpec, choice_problem, decay_spec, policy_problem, ratio_problem

__all__ = ["DecayMapError", "DecaySpec", "choice_problem", "decay_spec", "policy_problem", "ratio_problem"]
