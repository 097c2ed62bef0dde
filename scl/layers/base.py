"""The common machinery of stochastic conditional layers.

A layer holds one set of parameter networks per class and per distribution parameter (``k_mu_c``,
``k_sigma_c`` of spec §3.1.1). Given an input and a selection ``pi`` it computes the distribution's
raw parameter maps, builds the distribution and samples from it.

Placement (spec §2.1.1):

* ``selection_at="input"``: class c's networks see ``x * pi_c`` and the class outputs are summed.
  Class c's bias is multiplied by ``pi_c`` averaged over channels (and, for a spatial selection,
  pooled to the output's resolution), so that with a hard selection the layer is exactly class c's
  layer: a class that receives a zero input contributes nothing, not even its bias.
* ``selection_at="output"``: every class's networks see ``x``; the outputs are weighted by
  ``pi_c`` and summed.

Both placements give class c's distribution under a hard selection.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from scl import distributions as D
from scl.errors import ConfigError, ShapeError
from scl.random import CipherStream, noise_generator
from scl.selection import ClassIndex, Selection, SharedSelection, check_labels
from scl.validation import check_choice, check_num_classes, check_tensor, fingerprint

PLACEMENTS = ("input", "output")

# Dense per-class outputs are computed in chunks of classes whose output stays below this many
# elements, so a spatial selection at the output never materialises a [B, C, P*out, H, W] tensor.
_CHUNK_ELEMENTS = 1 << 24


class StochasticConditionalLayer(nn.Module):
    """Base class: selection handling, distribution and sampling.

    Subclasses implement :meth:`params` (the raw parameter maps for an input and a selection).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        distribution: str | D.NoiseDistribution = "gaussian",
        distribution_options: dict[str, Any] | None = None,
        selection_at: str = "input",
    ) -> None:
        super().__init__()
        self.num_classes = check_num_classes(num_classes)
        self.noise = D.get(distribution, **(distribution_options or {}))
        self.selection_at = check_choice("selection_at", selection_at, PLACEMENTS)

    @property
    def num_params(self) -> int:
        return self.noise.num_params

    # -- subclasses -------------------------------------------------------------------------------
    def params(self, x: Tensor, pi: Selection) -> list[Tensor]:
        """The raw parameter maps (before the distribution's constraints), one per parameter."""
        raise NotImplementedError

    # -- public API -------------------------------------------------------------------------------
    def distribution(self, x: Tensor, pi: Selection) -> Distribution:
        """The distribution of the layer's output for input ``x`` and selection ``pi``."""
        return self.noise.build(self.params(x, pi))

    def forward(
        self, x: Tensor, pi: Selection, *, generator: torch.Generator | CipherStream | None = None
    ) -> Tensor:
        """One sample of the layer's output (reparameterised in training mode).

        In eval mode the noise comes from the process's cipher stream (AES-256-CTR keyed from
        ``os.urandom``) unless ``generator`` is given (a ``torch.Generator`` or an
        :class:`scl.random.CipherStream`) or the call is inside ``scl.deterministic(seed)``; in
        training mode from torch's global generator (see :mod:`scl.random`).
        """
        return self.sample_with_distribution(x, pi, generator=generator)[0]

    def sample_with_distribution(
        self, x: Tensor, pi: Selection, *, generator: torch.Generator | CipherStream | None = None
    ) -> tuple[Tensor, Distribution]:
        """``(sample, distribution)`` from one computation of the parameter maps (for losses that
        need both, e.g. a noise-entropy privacy term)."""
        joint = self._joint_params(x, pi)
        gen = noise_generator(x.device, training=self.training, generator=generator)
        if joint is None:
            dist = self.distribution(x, pi)
            return self.noise.sample(dist, training=self.training, generator=gen), dist
        return self.noise.sample_joint(*joint, training=self.training, generator=gen)

    def output_spatial(self, x: Tensor) -> tuple[int, ...]:
        """The spatial size (the dims after channels) of the layer's output for an input like
        ``x``; a box selection at the output is drawn at this size."""
        return tuple(x.shape[2:])

    def _joint_params(self, x: Tensor, pi: Selection) -> tuple[Tensor, int] | None:
        """The raw maps stacked along one dim as computed, ``(maps, dim)``, if the layer has them
        (sampling from them skips a split and a concatenation in backward); else ``None``."""
        return None

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, distribution={self.noise!r}, "
            f"selection_at={self.selection_at!r}"
        )

    # -- helpers ----------------------------------------------------------------------------------
    def _selection(self, pi: Any, batch_size: int) -> ClassIndex | SharedSelection | Tensor:
        """Validate ``pi`` against the layer and the batch."""
        if isinstance(pi, ClassIndex):
            if pi.num_classes != self.num_classes:
                raise ShapeError(
                    f"the selection has {pi.num_classes} classes but the layer has "
                    f"{self.num_classes}; build HardSelection({self.num_classes})"
                )
            return ClassIndex(check_labels(pi.labels, self.num_classes, batch_size), self.num_classes)
        if isinstance(pi, SharedSelection):
            values = pi.values
            if values.dim() < 1 or values.shape[0] != self.num_classes:
                raise ShapeError(
                    f"the shared selection must have {self.num_classes} class tensors (dim 0), "
                    f"but got shape {tuple(values.shape)}"
                )
            return pi
        if isinstance(pi, Tensor) and not pi.dtype.is_floating_point:
            return ClassIndex(check_labels(pi, self.num_classes, batch_size), self.num_classes)
        if not isinstance(pi, Tensor):
            raise ShapeError(
                "pi must be a ClassIndex (HardSelection), a SharedSelection (SoftSelection), "
                f"integer labels or a float tensor [B, C, ...], but got {type(pi).__name__}"
            )
        check_tensor(pi, "pi", min_ndim=2)
        if pi.shape[0] != batch_size or pi.shape[1] != self.num_classes:
            raise ShapeError(
                f"pi must have shape [B={batch_size}, C={self.num_classes}, ...], "
                f"but got {tuple(pi.shape)}"
            )
        return pi


def _broadcast_check(name: str, sel_shape: tuple[int, ...], feature_shape: tuple[int, ...]) -> None:
    if sel_shape == ():
        return
    ok = len(sel_shape) == len(feature_shape) and all(
        s in (1, f) for s, f in zip(sel_shape, feature_shape, strict=False)
    )
    if not ok:
        raise ShapeError(
            f"each class tensor of the selection must have shape () or the rank of the {name} "
            f"{feature_shape} with sizes 1 or equal, but got {sel_shape}"
        )


class ClassLinearMap(StochasticConditionalLayer):
    """Layers whose parameter networks are linear maps: convolution and fully connected.

    Parameters: ``weight: Tensor[C, P*out, in, *kernel]`` and ``bias: Tensor[C, P*out]`` (class c
    owns slice c of each, nothing is shared between classes). Internally tensors are channel-first
    ``[B, channels, *spatial]``; subclasses provide the linear op and the layout conversion.

    Paths, none of which loops over classes in Python:

    * hard selection (:class:`ClassIndex`): gather each sample's class parameters, one batched op;
    * selection constant over space (``S = ()``, ``(ch, 1, 1)``...): mix the class kernels by
      ``pi`` (once for a shared selection, cached in eval mode; per sample otherwise), one op;
    * spatial selection at the input: one op over ``C * in`` channels;
    * spatial selection at the output: class outputs computed in bounded chunks of classes.
    """

    kernel_rank = 0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_classes: int,
        kernel_size: tuple[int, ...],
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, **kwargs)
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, but got {value!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        rows = self.num_params * out_channels
        self.weight = nn.Parameter(torch.empty(self.num_classes, rows, in_channels, *kernel_size))
        self.bias = nn.Parameter(torch.empty(self.num_classes, rows))
        self._mixed: tuple[tuple[Any, ...], Tensor, Tensor] | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform kernels per class (as ``nn.Conv2d``/``nn.Linear``); biases set to the
        distribution's initial values (e.g. a moderate initial noise scale)."""
        fan_in = self.weight[0, 0].numel()
        bound = 1.0 / fan_in**0.5
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            init = torch.tensor(self.noise.initial_bias()).repeat_interleave(self.out_channels)
            self.bias.copy_(init.expand_as(self.bias))
        self._mixed = None

    def invalidate_cache(self) -> None:
        """Forget the kernels cached for a shared (soft) selection in eval mode. Needed only after
        editing ``weight`` or ``bias`` through ``.data``, which PyTorch's version counter does not
        see; optimiser steps, ``load_state_dict`` and edits under ``torch.no_grad()`` are seen."""
        self._mixed = None

    # -- subclass hooks: channel-first tensors ---------------------------------------------------
    def _check_input(self, x: Tensor) -> None:
        raise NotImplementedError

    def _to_cf(self, x: Tensor) -> Tensor:
        return x

    def _from_cf(self, y: Tensor) -> Tensor:
        return y

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """One op for the whole batch: ``weight: [rows, in, *kernel]``, ``bias: [rows]``."""
        raise NotImplementedError

    def _op_per_sample(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        """Sample b with its own kernels: ``weight: [B, rows, in, *kernel]``, ``bias: [B, rows]``."""
        raise NotImplementedError

    def _out_spatial(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        return spatial

    def output_spatial(self, x: Tensor) -> tuple[int, ...]:
        return self._out_spatial(tuple(x.shape[2:]))

    def _pool_gate(self, gate: Tensor, spatial: tuple[int, ...]) -> Tensor:
        return gate

    # -- the layer --------------------------------------------------------------------------------
    def params(self, x: Tensor, pi: Selection) -> list[Tensor]:
        """Raw parameter maps, each ``[B, out, *spatial_out]`` (``[B, ..., out]`` for linear)."""
        joint, dim = self._joint_params(x, pi)
        return list(joint.split(self.out_channels, dim=dim))

    def _joint_params(self, x: Tensor, pi: Selection) -> tuple[Tensor, int]:
        self._check_input(x)
        sel = self._selection(pi, x.shape[0])
        xc = self._to_cf(x)
        if isinstance(sel, ClassIndex):
            y = self._op_per_sample(xc, self.weight[sel.labels], self.bias[sel.labels])
        else:
            y = self._selected(xc, sel)
        return self._from_cf(y), self._param_dim(x)

    def _param_dim(self, x: Tensor) -> int:
        return 1

    def params_per_class(self, x: Tensor) -> list[Tensor]:
        """Class c's raw parameter maps of its own input ``x[:, c]``, for every class at once.

        ``x: Tensor[B, C, *input]`` -> each map ``Tensor[B, C, *output]``; as a hard selection of
        class c applied to ``x[:, c]``, in one op (e.g. an attack that tries every class).
        """
        check_tensor(x, "x", min_ndim=3)
        if x.shape[1] != self.num_classes:
            raise ShapeError(
                f"x must have one input per class in dim 1 ({self.num_classes}), "
                f"but got shape {tuple(x.shape)}"
            )
        self._check_input(x[:, 0])
        y = self._op_per_class(x)  # [B, C, rows, *spatial] (channel-first)
        maps = y.reshape(y.shape[0], self.num_classes, self.num_params, self.out_channels, *y.shape[3:])
        return [self._from_cf(m.flatten(0, 1)).unflatten(0, (y.shape[0], self.num_classes)) for m in maps.unbind(2)]

    def _op_per_class(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _selected(self, x: Tensor, sel: SharedSelection | Tensor) -> Tensor:
        shared = isinstance(sel, SharedSelection)
        values = sel.values.unsqueeze(0) if isinstance(sel, SharedSelection) else sel
        values = self._selection_to_cf(values)  # [N, C, *S] channel-first, N = B or 1
        spatial_in = tuple(x.shape[2:])
        if self.selection_at == "input":
            features = (self.in_channels, *spatial_in)
        else:
            features = (self.out_channels, *self._out_spatial(spatial_in))
        sel_shape = tuple(values.shape[2:])
        _broadcast_check(f"layer {self.selection_at}", sel_shape, features)
        if len(sel_shape) <= 1 or all(s == 1 for s in sel_shape[1:]):
            coeff = values.reshape(values.shape[0], self.num_classes, -1)  # [N, C, ch or 1]
            key = sel.key if isinstance(sel, SharedSelection) and not self.training else None
            weight, bias = self._mix_cached(coeff, key)
            if shared:
                return self._op(x, weight[0], bias[0])
            return self._op_per_sample(x, weight, bias)
        if self.selection_at == "input":
            return self._dense_input(x, values)
        return self._dense_output(x, values)

    def _selection_to_cf(self, values: Tensor) -> Tensor:
        return values

    def _mix(self, coeff: Tensor) -> tuple[Tensor, Tensor]:
        """Kernels mixed by per-class coefficients ``coeff: [N, C, ch]`` (ch = 1, in or out)."""
        n, c, ch = coeff.shape
        w = self.weight.flatten(3) if self.kernel_rank else self.weight.unsqueeze(-1)
        if self.selection_at == "input":
            if ch == 1:
                mixed = torch.einsum("nc,coik->noik", coeff[..., 0], w)
            else:
                mixed = torch.einsum("nci,coik->noik", coeff, w)
            bias = coeff.mean(-1) @ self.bias
        else:
            rows = coeff.repeat(1, 1, self.num_params) if ch > 1 else coeff.expand(n, c, w.shape[1])
            mixed = torch.einsum("nco,coik->noik", rows, w)
            bias = torch.einsum("nco,co->no", rows, self.bias)
        return mixed.reshape(n, *self.weight.shape[1:]), bias

    def _mix_cached(self, coeff: Tensor, key: tuple[Any, ...] | None) -> tuple[Tensor, Tensor]:
        grad = torch.is_grad_enabled() and (
            coeff.requires_grad or self.weight.requires_grad or self.bias.requires_grad
        )
        if key is None or grad:
            return self._mix(coeff)
        full_key = (key, fingerprint(self.weight), fingerprint(self.bias), self.selection_at)
        if self._mixed is None or self._mixed[0] != full_key:
            with torch.no_grad():
                weight, bias = self._mix(coeff)
            self._mixed = (full_key, weight, bias)
        return self._mixed[1], self._mixed[2]

    def _dense_input(self, x: Tensor, values: Tensor) -> Tensor:
        """``sum_c op(x * pi_c, k_c) + b_c * gate_c`` as one op over ``C * in`` channels."""
        b = x.shape[0]
        c, rows = self.num_classes, self.weight.shape[1]
        xe = (x.unsqueeze(1) * values).reshape(b, c * self.in_channels, *x.shape[2:])
        weight = self.weight.transpose(0, 1).reshape(rows, c * self.in_channels, *self.weight.shape[3:])
        y = self._op(xe, weight, torch.zeros(rows, dtype=x.dtype, device=x.device))
        gate = self._pool_gate(values.mean(2), tuple(y.shape[2:]))  # [N, C, *spatial_out]
        return y + torch.einsum("nc...,co->no...", gate, self.bias)

    def _dense_output(self, x: Tensor, values: Tensor) -> Tensor:
        """``sum_c pi_c * op(x, k_c)``, classes in chunks bounded by ``_CHUNK_ELEMENTS``."""
        b, c, rows = x.shape[0], self.num_classes, self.weight.shape[1]
        spatial = self._out_spatial(tuple(x.shape[2:]))
        per_class = b * rows * max(1, int(torch.tensor(spatial).prod()) if spatial else 1)
        step = max(1, _CHUNK_ELEMENTS // per_class)
        parts = []
        for start in range(0, c, step):  # a few bounded chunks, not one iteration per class
            stop = min(c, start + step)
            w = self.weight[start:stop].reshape((stop - start) * rows, *self.weight.shape[2:])
            y = self._op(x, w, self.bias[start:stop].reshape(-1))
            y = y.reshape(b, stop - start, self.num_params, self.out_channels, *y.shape[2:])
            parts.append((y * values[:, start:stop].unsqueeze(2)).sum(1))
        total = parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)
        return total.reshape(b, rows, *total.shape[3:])
