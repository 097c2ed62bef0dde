"""scl: stochastic conditional layers.

Trainable layers whose outputs are the parameters of a noise distribution, one set of parameters
per class, used to obfuscate an input (or an activation) so that a downstream network still infers
correctly while the data itself is hidden. See README.md and DESIGN.md.
"""

# every class a command saves registers itself for scl.load where it is defined; importing the
# task networks here (torch only) lets scl.load rebuild any run's checkpoint after `import scl`
from scl import distributions, models
from scl._version import __version__
from scl.embodiments import ObfuscatedNetwork, SplitNetwork
from scl.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    LabelError,
    SCLError,
    ShapeError,
)
from scl.io import load, register_module, save
from scl.layers import (
    StochasticConditional,
    StochasticConditionalAdditive,
    StochasticConditionalConv2d,
    StochasticConditionalLayer,
    StochasticConditionalLinear,
)
from scl.obfuscator import Obfuscator, freeze
from scl.random import deterministic
from scl.selection import (
    ClassIndex,
    GatedSelection,
    HardSelection,
    SharedSelection,
    SoftSelection,
)

__all__ = [
    "CheckpointError",
    "ClassIndex",
    "ConfigError",
    "DataError",
    "GatedSelection",
    "HardSelection",
    "LabelError",
    "ObfuscatedNetwork",
    "Obfuscator",
    "SCLError",
    "ShapeError",
    "SharedSelection",
    "SoftSelection",
    "SplitNetwork",
    "StochasticConditional",
    "StochasticConditionalAdditive",
    "StochasticConditionalConv2d",
    "StochasticConditionalLayer",
    "StochasticConditionalLinear",
    "__version__",
    "deterministic",
    "distributions",
    "freeze",
    "load",
    "models",
    "register_module",
    "save",
]
