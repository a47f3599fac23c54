"""An autograd node from a forward function and its analytic VJP."""

from __future__ import annotations

import torch


def analytic_function(name: str, forward, vjp) -> type[torch.autograd.Function]:
    """A torch.autograd.Function whose forward is forward(*inputs) and whose backward is
    the spec's vjp(*inputs, dout) -> one gradient per input, in order."""

    def fwd(ctx, *inputs):
        ctx.save_for_backward(*inputs)
        return forward(*inputs)

    def bwd(ctx, dout):
        return vjp(*ctx.saved_tensors, dout.contiguous())

    doc = f"Φ as an autograd node whose backward is the spec's analytic `{vjp.__module__}.vjp`."
    return type(name, (torch.autograd.Function,),
                {"forward": staticmethod(fwd), "backward": staticmethod(bwd), "__doc__": doc})
