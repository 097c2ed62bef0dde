"""Stochastic conditional layers: one set of parameter networks per class (spec §1)."""

from scl.layers.additive import StochasticConditionalAdditive
from scl.layers.base import PLACEMENTS, StochasticConditionalLayer
from scl.layers.conv import StochasticConditionalConv2d
from scl.layers.generic import StochasticConditional
from scl.layers.linear import StochasticConditionalLinear

__all__ = [
    "PLACEMENTS",
    "StochasticConditional",
    "StochasticConditionalAdditive",
    "StochasticConditionalConv2d",
    "StochasticConditionalLayer",
    "StochasticConditionalLinear",
]
