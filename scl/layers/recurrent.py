"""Grouped LSTM and GRU: G independent recurrent networks, each with its own weights, in one pass.

``torch.func.vmap`` has no batching rule for ``aten::lstm``/``aten::gru``, so stacking class
modules with ``stack_module_state`` and mapping over them fails for recurrent networks. Written by
hand here: the input projections of every time step are one batched matmul per layer and direction,
and the recurrence is one batched matmul per time step (a loop over time, never over classes).
The equations and the parameter names are those of ``nn.LSTM`` and ``nn.GRU``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scl.errors import ConfigError

SUPPORTED = (nn.LSTM, nn.GRU)


def check_supported(module: nn.Module) -> None:
    """Refuse recurrent options the grouped implementation does not reproduce."""
    if isinstance(module, nn.LSTM) and module.proj_size:
        raise ConfigError("nn.LSTM with proj_size > 0 is not supported in StochasticConditional")


def grouped_rnn(
    template: nn.LSTM | nn.GRU,
    params: dict[str, Tensor],
    x: Tensor,
    *,
    training: bool,
) -> Tensor:
    """Run G networks shaped like ``template``.

    Args:
        template: the module whose configuration (layers, direction, batch_first) is used.
        params: the module's parameters, each stacked along a leading group dim ``G``.
        x: ``Tensor[G, N, T, I]`` (``batch_first``) or ``Tensor[G, T, N, I]``; ``G`` may be 1
            and is then broadcast against the parameters.

    Returns:
        The top layer's outputs for every step, ``Tensor[G, N, T, D*H]`` (or ``[G, T, N, D*H]``).
    """
    lstm = isinstance(template, nn.LSTM)
    gates = 4 if lstm else 3
    if not template.batch_first:
        x = x.transpose(1, 2)
    directions = 2 if template.bidirectional else 1
    hidden = template.hidden_size
    layer_input = x  # [G, N, T, I]
    for layer in range(template.num_layers):
        outputs = []
        for direction in range(directions):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = params["weight_ih" + suffix], params["weight_hh" + suffix]
            # every time step's input projection at once: [G, N, T, gates*H]
            proj = torch.matmul(layer_input, w_ih.transpose(1, 2).unsqueeze(1))
            if template.bias:
                proj = proj + params["bias_ih" + suffix][:, None, None]
                b_hh = params["bias_hh" + suffix][:, None]
            else:
                b_hh = None
            g, n, steps = proj.shape[0], proj.shape[1], proj.shape[2]
            h = proj.new_zeros(g, n, hidden)
            c = proj.new_zeros(g, n, hidden)
            order = range(steps - 1, -1, -1) if direction else range(steps)
            out = [proj.new_empty(0)] * steps
            for t in order:
                rec = torch.bmm(h, w_hh.transpose(1, 2))
                if b_hh is not None:
                    rec = rec + b_hh
                if lstm:
                    i, f, gg, o = (proj[:, :, t] + rec).chunk(gates, -1)
                    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
                    h = torch.sigmoid(o) * torch.tanh(c)
                else:
                    xr, xz, xn = proj[:, :, t].chunk(gates, -1)
                    hr, hz, hn = rec.chunk(gates, -1)
                    r = torch.sigmoid(xr + hr)
                    z = torch.sigmoid(xz + hz)
                    nn_ = torch.tanh(xn + r * hn)
                    h = (1 - z) * nn_ + z * h
                out[t] = h
            outputs.append(torch.stack(out, 2))
        layer_input = torch.cat(outputs, -1) if directions == 2 else outputs[0]
        if training and template.dropout and layer < template.num_layers - 1:
            layer_input = F.dropout(layer_input, template.dropout, training=True)
    return layer_input if template.batch_first else layer_input.transpose(1, 2)
