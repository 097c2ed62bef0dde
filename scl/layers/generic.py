"""Turn any module into a stochastic conditional layer (LSTM, GRU, transformer, ...).

``StochasticConditional(factory, C)`` builds ``C * P`` copies of ``factory()`` (one per class and
per distribution parameter), stacks their parameters, and runs them all as one batched call:

* LSTM/GRU: :mod:`scl.layers.recurrent` (vmap has no batching rule for them);
* anything else: ``torch.func.functional_call`` under ``torch.func.vmap`` over the stacked
  parameters.

With a hard selection each sample runs only its own class's networks (parameters gathered per
sample). With a soft or dense selection every class's networks run (cost: one layer C times wider).
For ``selection_at="input"`` the networks are nonlinear, so a class that receives the zero input
``x * 0`` still has an output; class c's output is therefore weighted by ``pi_c`` averaged over
its elements: ``sum_c mean(pi_c) * f_c(x * pi_c)``. A hard selection gives exactly ``f_c(x)``.
"""

from __future__ import annotations

import copy
import functools
import importlib
import warnings
from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from scl.errors import ConfigError, ShapeError
from scl.io import register_module
from scl.layers import recurrent
from scl.layers.base import StochasticConditionalLayer, _broadcast_check
from scl.selection import ClassIndex, Selection, SharedSelection
from scl.validation import check_tensor

# Modules a checkpoint may name as a factory: classes of these packages only (never arbitrary code).
SAFE_FACTORY_MODULES = ("torch.nn", "scl")


def _first(output: Any) -> Tensor:
    """Modules such as nn.LSTM return ``(output, state)``: keep the output."""
    return output[0] if isinstance(output, (tuple, list)) else output


def describe_factory(factory: Callable[[], nn.Module]) -> dict[str, Any] | None:
    """A JSON description of ``factory`` if it is a class or a ``functools.partial`` of a class
    from a safe package with JSON-able arguments; otherwise ``None`` (not saveable)."""
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    target: Any = factory
    if isinstance(factory, functools.partial):
        target, args, kwargs = factory.func, factory.args, dict(factory.keywords)
    if not isinstance(target, type):
        return None
    module = target.__module__
    if not any(module == m or module.startswith(m + ".") for m in SAFE_FACTORY_MODULES):
        return None
    for value in (*args, *kwargs.values()):
        if not isinstance(value, (int, float, str, bool, type(None))):
            return None
    public = module
    if module.startswith("torch.nn.") and hasattr(nn, target.__name__):
        public = "torch.nn"
    return {"class": f"{public}.{target.__name__}", "args": list(args), "kwargs": kwargs}


def factory_from_description(description: dict[str, Any]) -> Callable[[], nn.Module]:
    """Rebuild a factory saved by :func:`describe_factory` (safe packages only)."""
    name = str(description.get("class", ""))
    module_name, _, class_name = name.rpartition(".")
    if not any(module_name == m or module_name.startswith(m + ".") for m in SAFE_FACTORY_MODULES):
        raise ConfigError(
            f"refusing to build factory {name!r}: only classes from {SAFE_FACTORY_MODULES} are allowed"
        )
    target = getattr(importlib.import_module(module_name), class_name, None)
    if not isinstance(target, type) or not issubclass(target, nn.Module):
        raise ConfigError(f"factory {name!r} is not an nn.Module class")
    return functools.partial(target, *description.get("args", []), **description.get("kwargs", {}))


@register_module
class StochasticConditional(StochasticConditionalLayer):
    """A stochastic conditional layer whose parameter networks are built by ``factory``.

    Args:
        factory: builds one parameter network, e.g.
            ``functools.partial(nn.LSTM, 8, 16, batch_first=True)``; it is called ``C * P`` times.
            Each network maps ``Tensor[B, ...]`` to ``Tensor[B, ...]`` (a tuple output keeps its
            first element). A class or a ``functools.partial`` of a ``torch.nn`` class can be saved
            with :func:`scl.save`.
        num_classes: C.
        distribution, distribution_options, selection_at: as for the convolution.

    Example::

        layer = scl.StochasticConditional(
            functools.partial(nn.GRU, 8, 8, batch_first=True), num_classes=4)
        h = layer(x, labels)          # x: Tensor[B, T, 8] -> h: Tensor[B, T, 8]
    """

    def __init__(
        self,
        factory: Callable[[], nn.Module],
        num_classes: int,
        *,
        distribution: str = "gaussian",
        distribution_options: dict[str, Any] | None = None,
        selection_at: str = "input",
    ) -> None:
        super().__init__(
            num_classes,
            distribution=distribution,
            distribution_options=distribution_options,
            selection_at=selection_at,
        )
        if not callable(factory):
            raise ConfigError(f"factory must be callable and return an nn.Module, but got {factory!r}")
        self.factory = factory
        modules = [factory() for _ in range(self.num_classes * self.num_params)]
        if not all(isinstance(m, nn.Module) for m in modules):
            raise ConfigError(f"factory must return an nn.Module, but returned {type(modules[0]).__name__}")
        template = modules[0]
        self.recurrent = isinstance(template, recurrent.SUPPORTED)
        if self.recurrent:
            recurrent.check_supported(template)
        params, buffers = stack_module_state(modules)
        shape = (self.num_classes, self.num_params)
        self._names = list(params)
        self._buffer_names = list(buffers)
        # parameters of class c and distribution parameter p live at [c, p]; nothing is shared
        self.stacked = nn.ParameterDict(
            {self._key(k): nn.Parameter(v.detach().reshape(*shape, *v.shape[1:])) for k, v in params.items()}
        )
        for k, v in buffers.items():
            self.register_buffer("buffer_" + self._key(k), v.reshape(*shape, *v.shape[1:]))
        # a parameter-less copy that only describes the computation
        self._template = (copy.deepcopy(template).to("meta"),)
        # whether the network has attention, whose fused inference path vmap must not take (see _run)
        self._attention = any(isinstance(m, nn.MultiheadAttention) for m in template.modules())

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def _stacked(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        params = {n: self.stacked[self._key(n)] for n in self._names}
        buffers = {n: getattr(self, "buffer_" + self._key(n)) for n in self._buffer_names}
        return params, buffers

    def _run(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        """``G`` networks (leading dim of params) on ``x: [G or 1, N, ...]`` -> ``[G, N, ...]``."""
        template = self._template[0]
        template.train(self.training)
        if self.recurrent:
            return recurrent.grouped_rnn(cast("nn.LSTM | nn.GRU", template), params, x, training=self.training)

        def call(p: dict[str, Tensor], b: dict[str, Tensor], xs: Tensor) -> Tensor:
            return _first(functional_call(template, (p, b), (xs,)))

        in_x = 0 if x.shape[0] > 1 or next(iter(params.values())).shape[0] == 1 else None
        xs = x if in_x == 0 else x[0]
        # Inside vmap, torch's attention modules cannot see that gradients are needed and would
        # take their fused inference path, which has no backward. The switch is the whole
        # process's, so it is turned off only for a network with attention while gradients are on,
        # and restored exactly after the call.
        attention = self._attention and torch.is_grad_enabled()
        fastpath = torch.backends.mha.get_fastpath_enabled()
        try:
            if attention and fastpath:
                torch.backends.mha.set_fastpath_enabled(False)
            with warnings.catch_warnings():
                # vmap falls back to a loop for a few attention kernels on CPU and says so
                warnings.filterwarnings("ignore", message="There is a performance drop")
                return vmap(call, in_dims=(0, 0, in_x), randomness="different")(params, buffers, xs)
        finally:
            if attention and fastpath:
                torch.backends.mha.set_fastpath_enabled(True)

    def params(self, x: Tensor, pi: Selection) -> list[Tensor]:
        """Raw parameter maps, each shaped like one network's output ``[B, ...]``."""
        check_tensor(x, "x", min_ndim=2)
        sel = self._selection(pi, x.shape[0])
        params, buffers = self._stacked()
        c, p, b = self.num_classes, self.num_params, x.shape[0]
        try:
            if isinstance(sel, ClassIndex):
                gathered = {k: v[sel.labels].flatten(0, 1) for k, v in params.items()}
                gbuf = {k: v[sel.labels].flatten(0, 1) for k, v in buffers.items()}
                xs = x.unsqueeze(1).expand(b, p, *x.shape[1:]).reshape(b * p, 1, *x.shape[1:])
                out = self._run(gathered, gbuf, xs)  # [B*P, 1, ...]
                out = out.reshape(b, p, *out.shape[2:]).transpose(0, 1)
                return list(out.unbind(0))
            values = sel.values.unsqueeze(0) if isinstance(sel, SharedSelection) else sel
            flat = {k: v.flatten(0, 1) for k, v in params.items()}
            fbuf = {k: v.flatten(0, 1) for k, v in buffers.items()}
            if self.selection_at == "input":
                _broadcast_check("input", tuple(values.shape[2:]), tuple(x.shape[1:]))
                pi_x = values.reshape(*values.shape, *([1] * (x.dim() + 1 - values.dim())))
                xc = (x.unsqueeze(1) * pi_x).transpose(0, 1)  # [C, B, ...]
                xs = xc.unsqueeze(1).expand(c, p, *xc.shape[1:]).reshape(c * p, *xc.shape[1:])
                out = self._run(flat, fbuf, xs)  # [C*P, B, ...]
                shape = tuple(out.shape[2:])
                gate = values.reshape(values.shape[0], c, -1).mean(-1)  # [N, C]
                out = out.reshape(c, p, b, *shape)
                mixed = torch.einsum("bc,cpb...->pb...", gate.expand(b, c), out)
            else:
                out = self._run(flat, fbuf, x.unsqueeze(0))  # [C*P, B, ...]
                shape = tuple(out.shape[2:])
                _broadcast_check("output", tuple(values.shape[2:]), shape)
                out = out.reshape(c, p, b, *shape)
                pi_o = values.reshape(*values.shape, *([1] * (len(shape) + 2 - values.dim())))
                mixed = (out * pi_o.transpose(0, 1).unsqueeze(1)).sum(0)  # [P, B, ...]
        except (RuntimeError, AssertionError) as exc:  # torch modules assert on input sizes
            raise ShapeError(
                f"the parameter networks rejected an input of shape {tuple(x.shape)}: {exc}"
            ) from exc
        return [m.reshape(b, *shape) for m in mixed.unbind(0)]

    def output_spatial(self, x: Tensor) -> tuple[int, ...]:
        # one network on a shape-only (meta) input: no compute, the size whatever the network does
        probe = torch.empty((1, *x.shape[1:]), device="meta", dtype=x.dtype)
        try:
            with torch.no_grad():
                out = _first(self._template[0](probe))
        except (RuntimeError, AssertionError) as exc:
            raise ShapeError(
                f"the parameter networks rejected an input of shape {tuple(x.shape)}: {exc}"
            ) from exc
        return tuple(out.shape[2:])

    def extra_repr(self) -> str:
        return f"network={self._template[0]!r}, " + super().extra_repr()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StochasticConditional:
        config = dict(config)
        factory = factory_from_description(config.pop("factory"))
        return cls(factory, **config)

    def config(self) -> dict[str, Any]:
        description = describe_factory(self.factory)
        if description is None:
            raise ConfigError(
                "this layer's factory cannot be saved: use a torch.nn class or "
                "functools.partial(torch.nn.CLASS, ...) with plain arguments, or save the weights "
                "with scl.save(layer.state_dict() ...) via scl.load(path, into=layer)"
            )
        return {
            "factory": description,
            "num_classes": self.num_classes,
            "distribution": self.noise.name,
            "distribution_options": self.noise.config(),
            "selection_at": self.selection_at,
        }
