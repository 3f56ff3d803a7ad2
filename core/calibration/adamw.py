"""AdamW for q_θ without torch's optimizer machinery (the same update, bit for bit, on CPU).

``torch.optim.Optimizer`` wraps its methods in ``torch._disable_dynamo``, which imports
``torch._dynamo`` (the graph compiler) the first time an optimizer is built: about 1 s of CPU, and
another ~0.5 s of first-step set-up, for a network of ~10^4 parameters that trains in under a
second. Every process that calibrates paid it once — the app's first calibration, each ``flexcal``
command, each notebook kernel. :class:`AdamW` performs exactly the update of
``torch.optim.AdamW(params, lr, weight_decay)`` with its defaults (betas 0.9 / 0.999, eps 1e-8,
no amsgrad, the single-tensor path torch takes for CPU tensors), operation for operation, so the
trained weights are identical (``tests/test_adamw.py`` compares them bit for bit with torch's).
"""

from __future__ import annotations

from typing import Iterable

__all__ = ("AdamW",)


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter) over a fixed list of tensors.

    Parameters
    ----------
    params : iterable of torch.Tensor
        Leaf tensors with ``requires_grad``; their ``.grad`` is read at each :meth:`step`.
    lr : float
        Learning rate (> 0).
    weight_decay : float
        Decoupled weight decay (>= 0): each step first scales a parameter by ``1 - lr * weight_decay``.
    betas, eps
        As in ``torch.optim.AdamW``.
    """

    def __init__(self, params: Iterable, *, lr: float, weight_decay: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        from core.calibration.qtheta import torch_module

        torch = torch_module()
        if not lr > 0:
            raise ValueError(f"lr: expected a positive number, got {lr!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay: expected a number >= 0, got {weight_decay!r}")
        self.params = list(params)
        self.lr, self.weight_decay, self.eps = float(lr), float(weight_decay), float(eps)
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.steps = [0] * len(self.params)  # per parameter, as torch counts them
        self._exp_avg = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self._exp_avg_sq = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in self.params]
        self._no_grad = torch.no_grad

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (``set_to_none=False``: zero them in place)."""
        for p in self.params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def step(self) -> None:
        """One AdamW update of every parameter that has a gradient (torch's ``_single_tensor_adam``).

        A parameter without a gradient is left as is and its step count does not advance (as in torch).
        """
        with self._no_grad():
            for i, (param, exp_avg, exp_avg_sq) in enumerate(zip(self.params, self._exp_avg, self._exp_avg_sq)):
                grad = param.grad
                if grad is None:
                    continue
                self.steps[i] += 1
                step = float(self.steps[i])
                bias_correction1 = 1 - self.beta1 ** step
                bias_correction2_sqrt = (1 - self.beta2 ** step) ** 0.5
                step_size = self.lr / bias_correction1
                param.mul_(1 - self.lr * self.weight_decay)
                exp_avg.lerp_(grad, 1 - self.beta1)
                exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
                param.addcdiv_(exp_avg, denom, value=-step_size)
