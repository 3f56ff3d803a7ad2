"""core.calibration.adamw: torch.optim.AdamW's update without torch's optimizer machinery."""

import subprocess
import sys

import numpy as np
import pytest

from core.calibration.adamw import AdamW

torch = pytest.importorskip("torch")


def _problem(seed: int):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    x, y = torch.randn(64, 6, generator=g), torch.randn(64, 3, generator=g)
    return model, x, y


def _train(optimizer_class, seed: int, steps: int, **options):
    model, x, y = _problem(seed)
    opt = optimizer_class(model.parameters(), **options)
    for k in range(steps):
        idx = slice(8 * (k % 8), 8 * (k % 8) + 8)
        loss = ((model(x[idx]) - y[idx]) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("seed, lr, weight_decay", [(0, 1e-3, 1e-4), (1, 3e-2, 0.0), (2, 5e-3, 0.1)])
def test_the_weights_equal_torch_adamw_bit_for_bit(seed, lr, weight_decay):
    ours = _train(AdamW, seed, 120, lr=lr, weight_decay=weight_decay)
    theirs = _train(torch.optim.AdamW, seed, 120, lr=lr, weight_decay=weight_decay)
    start = [p.detach() for p in _problem(seed)[0].parameters()]
    for a, b, s in zip(ours, theirs, start):
        assert torch.equal(a, b)
        assert not torch.equal(a, s)  # it trained


def test_a_parameter_without_gradient_is_left_alone_like_torch():
    def run(cls):
        a = torch.nn.Parameter(torch.ones(3))
        b = torch.nn.Parameter(torch.full((2,), 2.0))
        opt = cls([a, b], lr=0.1, weight_decay=0.01)
        for k in range(5):
            opt.zero_grad()
            loss = (a ** 2).sum() + ((b ** 2).sum() if k >= 3 else 0.0)  # b gets gradients from step 4 on
            loss.backward()
            opt.step()
        return a.detach().clone(), b.detach().clone()

    (a1, b1), (a2, b2) = run(AdamW), run(torch.optim.AdamW)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(b1, torch.full((2,), 2.0))


def test_zero_grad_in_place_and_bad_settings():
    p = torch.nn.Parameter(torch.ones(2))
    opt = AdamW([p], lr=0.1, weight_decay=0.0)
    (p * 3).sum().backward()
    opt.zero_grad(set_to_none=False)
    assert p.grad is not None and np.array_equal(p.grad.numpy(), [0.0, 0.0])
    opt.zero_grad()
    assert p.grad is None
    with pytest.raises(ValueError, match="lr: expected a positive number, got 0"):
        AdamW([p], lr=0, weight_decay=0.0)
    with pytest.raises(ValueError, match="weight_decay: expected a number >= 0, got -1"):
        AdamW([p], lr=0.1, weight_decay=-1)


def test_calibrating_q_theta_never_imports_torch_dynamo():
    """The reason for the module: torch.optim imports torch._dynamo (~1 s of CPU) on first use."""
    code = (
        "import sys, numpy as np\n"
        "from core.calibration import make_calibrator\n"
        "from core.synthetic_demo import synthetic_site_table, synthetic_structures\n"
        "sites = synthetic_site_table(synthetic_structures(24, seed=0))\n"
        "cal = make_calibrator('flexible', hidden=(8,), max_epochs=5).fit(sites)\n"
        "assert np.all(cal.predict(sites) > 0)\n"
        "print('torch' in sys.modules, 'torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False"]
