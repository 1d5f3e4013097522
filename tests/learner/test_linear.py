"""learner.linear: fp32 linear layers through oneDNN give F.linear's values and gradients, and
``learner.cpu_linear: auto`` decides once per machine and shape."""
import json

import pytest
import torch

from learner import linear

pytestmark = pytest.mark.skipif(not linear.available(), reason="this torch has no oneDNN inner product")


@pytest.mark.parametrize("bias", [True, False])
def test_values_and_gradients_are_f_linears(bias):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(48, 32, generator=g) * 0.1).requires_grad_()
    b = torch.randn(48, generator=g).requires_grad_() if bias else None
    x = torch.randn(3, 7, 32, generator=g).requires_grad_()
    gy = torch.randn(3, 7, 48, generator=g)
    outs, grads = [], []
    for f in (torch.nn.functional.linear, linear.OneDNNLinear.apply):
        y = f(x, w, b)
        y.backward(gy)
        outs.append(y.detach())
        grads.append([t.grad.clone() for t in (x, w, b) if t is not None])
        for t in (x, w, b):
            if t is not None:
                t.grad = None
    assert outs[1].shape == (3, 7, 48)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for ours, theirs in zip(grads[1], grads[0]):
        assert ours.abs().max() > 0.1  # (non-trivial gradients)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_strided_input_and_a_frozen_weight():
    """A transposed (non-contiguous) input; a frozen weight gets no gradient, the input does."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 24, generator=g)
    x = torch.randn(24, 5, generator=g).t().requires_grad_()  # [5, 24], strides (1, 5)
    y = linear.OneDNNLinear.apply(x, w, None)
    torch.testing.assert_close(y, x @ w.t(), rtol=1e-5, atol=1e-5)
    y.sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(5, 24), rtol=1e-5, atol=1e-5)


def test_install_routes_fp32_linear_layers_and_leaves_other_dtypes_to_torch(monkeypatch):
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.SiLU(), torch.nn.Linear(16, 4, bias=False))
    x = torch.randn(2, 8)
    want = model(x)
    calls = []
    real = linear.OneDNNLinear.apply
    monkeypatch.setattr(linear.OneDNNLinear, "apply", lambda *a: calls.append(1) or real(*a))
    assert linear.install(model) == 2
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)
    assert len(calls) == 2
    model.to(torch.bfloat16)
    assert model(x.bfloat16()).dtype == torch.bfloat16 and len(calls) == 2  # bf16: torch's own linear


def test_choose_takes_onednn_only_for_fp32_on_cpu_and_where_measured_faster(tmp_path, monkeypatch):
    assert linear.choose("onednn", 8, 16) == ("onednn", "configured")
    assert linear.choose("torch", 8, 16) == ("torch", "configured")
    assert linear.choose("auto", 8, 16, dtype="bf16")[0] == "torch"
    assert linear.choose("onednn", 8, 16, device="cuda")[0] == "torch"
    assert linear.choose("auto", 8, 16, zero_stage=3)[0] == "torch"
    with pytest.raises(ValueError, match="learner.cpu_linear='fast': use one of"):
        linear.choose("fast", 8, 16)
    monkeypatch.setenv("VLM_R1_RAY_CACHE", str(tmp_path))
    probes = []
    for gain, want in ((1.5, "onednn"), (1.02, "torch")):
        monkeypatch.setattr(linear, "probe", lambda h, i, gain=gain: probes.append((h, i)) or gain)
        kind, why = linear.choose("auto", 64, 96 + len(probes))
        assert kind == want and f"oneDNN {gain:.2f}x" in why
    # measured once per machine and shape: a second learner reads the cache, whatever a new probe would say
    monkeypatch.setattr(linear, "probe", lambda h, i: probes.append((h, i)) or 9.0)
    assert linear.choose("auto", 64, 96)[0] == "onednn" and linear.choose("auto", 64, 97)[0] == "torch"
    assert probes == [(64, 96), (64, 97)]
    cached = json.loads((tmp_path / "cpu_linear.json").read_text())
    assert sorted(cached.values()) == [1.02, 1.5] and all("64x9" in k and "threads" in k for k in cached)


def test_the_probe_measures_a_ratio():
    gain = linear.probe(64, 128, rows=64, reps=2)
    assert 0.05 < gain < 20
