"""learner.linear: fp32 linear layers through oneDNN give F.linear's values and gradients, and the
learner's update with them torch's; ``learner.cpu_linear: auto`` takes them where they were measured faster."""
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


def test_auto_takes_onednn_on_amd_cpus_with_avx512_only_and_never_outside_fp32_on_cpu():
    amd = dict(vendor="AuthenticAMD", flags={"avx2", "avx512f", "avx512_bf16"})
    assert linear.choose("auto", **amd)[0] == "onednn"
    assert linear.choose("auto", vendor="AuthenticAMD", flags={"avx2"})[0] == "torch"  # (not measured there)
    assert linear.choose("auto", vendor="GenuineIntel", flags={"avx2", "avx512f"})[0] == "torch"
    assert linear.choose("auto", dtype="bf16", **amd)[0] == "torch"  # bf16: torch's own, oneDNN already
    assert linear.choose("onednn", device="cuda")[0] == "torch"
    assert linear.choose("auto", zero_stage=3, **amd)[0] == "torch"
    assert linear.choose("onednn", vendor="GenuineIntel", flags=set()) == ("onednn", "configured")
    assert linear.choose("torch", **amd) == ("torch", "configured")
    with pytest.raises(ValueError, match="learner.cpu_linear='fast': use one of"):
        linear.choose("fast")


@pytest.mark.parametrize("lora", [0, 4])
def test_onednn_linear_layers_give_torchs_update(tiny_model, synthetic, lora):
    """learner.cpu_linear=onednn (a speed change, auto's choice on AMD CPUs with AVX-512) against
    torch's own fp32 linear: the same losses, log-probs and weights after three steps to fp32
    round-off, with every linear layer of the policy and the reference routed (LoRA's too)."""
    from tests.learner.test_learner import _items, _learner, _three_steps
    runs, routed = {}, {}
    for kind in ("onednn", "torch"):
        lr = _learner(tiny_model, 2, **{"learner.cpu_linear": kind, "learner.lr": "1e-3", "learner.beta": "0.04",
                                        "learner.lora.r": lora})
        assert lr.linear == kind and lr.ref is not None
        routed[kind] = [sum(m.forward.__func__ is linear._forward for m in model.modules()
                            if isinstance(m, torch.nn.Linear) and hasattr(m.forward, "__func__"))
                        for model in (lr.engine.module, lr.ref)]
        runs[kind] = _three_steps(lr, tiny_model, synthetic) + (lr.logprobs(_items(tiny_model, synthetic)),)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in lr.ref.modules())
    assert routed["torch"] == [0, 0] and routed["onednn"][1] == n_linear > 10
    assert routed["onednn"][0] >= n_linear  # (with LoRA also each adapter's A and B)
    (la, wa, pa), (lb, wb, pb) = runs["onednn"], runs["torch"]
    assert la == pytest.approx(lb, rel=1e-4, abs=1e-6) and len(set(la)) > 1
    assert [x for r in pa for x in r] == pytest.approx([x for r in pb for x in r], abs=1e-4)
    assert wa.keys() == wb.keys() and all(float((wa[n] - wb[n]).abs().max()) <= 1e-5 for n in wa)
