"""The one-adapter fast path of vLLM's CPU LoRA ops gives what vLLM's own ops give.

``e2e``: it needs vLLM, whose import alone (about 15 CPU-seconds on 2 cores) would double the fast
tier's collection; the end-to-end tier imports it anyway."""
import pytest
import torch

from actors import lora_cpu

pytestmark = pytest.mark.e2e


def _generic(name):
    lora_ops = pytest.importorskip("vllm.lora.ops.torch_ops").lora_ops
    return lora_cpu._GENERIC.get(name, getattr(lora_ops, name))


@pytest.mark.parametrize("stacked_dims", [3, 4])
@pytest.mark.parametrize("index", [0, 1, -1])
def test_fast_ops_equal_vllms_for_one_adapter_and_fall_back_for_mixed(stacked_dims, index):
    torch.manual_seed(0)
    tokens, hidden, rank, out = 5, 32, 8, 24
    a = torch.randn(3, 1, rank, hidden, dtype=torch.bfloat16)  # 3 adapter slots: [L, 1, r, in]
    b = torch.randn(3, 1, out, rank, dtype=torch.bfloat16)
    if stacked_dims == 3:
        a, b = a.squeeze(1), b.squeeze(1)
    x = torch.randn(tokens, hidden, dtype=torch.bfloat16)
    for idx in (torch.full((tokens,), index), torch.tensor([0, 1, 2, 1, 0])):  # one adapter; mixed
        y_fast, y_ref = torch.zeros(tokens, rank), torch.zeros(tokens, rank)  # shrink: fp32, as in vLLM
        lora_cpu.shrink(x, a, y_fast, idx, 0.5)
        _generic("bgmv_shrink")(x, a, y_ref, idx, 0.5)
        assert torch.allclose(y_fast, y_ref, rtol=1e-5, atol=1e-5)
        for add in (True, False):
            base = torch.randn(tokens, out + 8, dtype=torch.bfloat16)  # the model pads wider
            o_fast, o_ref = base.clone(), base.clone()
            lora_cpu.expand(y_ref, b, o_fast, idx, add)
            _generic("bgmv_expand")(y_ref, b, o_ref, idx, add)
            assert torch.equal(o_fast, o_ref)
            s_fast, s_ref = base.clone(), base.clone()
            lora_cpu.expand_slice(y_ref, b, s_fast, idx, 4, out, add)
            _generic("bgmv_expand_slice")(y_ref, b, s_ref, idx, 4, out, add)
            assert torch.equal(s_fast, s_ref)


def test_a_new_adapter_copied_in_place_is_not_served_from_the_cast_cache():
    a = torch.randn(1, 4, 16, dtype=torch.bfloat16)
    x, idx = torch.randn(3, 16, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.long)
    first, second = torch.zeros(3, 4), torch.zeros(3, 4)
    lora_cpu.shrink(x, a, first, idx)
    a.copy_(torch.randn(1, 4, 16, dtype=torch.bfloat16))  # what vLLM does when it loads the next adapter
    lora_cpu.shrink(x, a, second, idx)
    expected = x.float() @ a[0].float().t()
    assert torch.allclose(second, expected, rtol=1e-5, atol=1e-5) and not torch.allclose(first, second)


def test_install_routes_vllms_cpu_ops_through_the_fast_path():
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu
    assert lora_cpu.install() and lora_cpu.install()  # idempotent
    assert punica_cpu.bgmv_shrink is lora_cpu.shrink and lora_ops.sgmv_expand is lora_cpu.sgmv_expand
    assert lora_cpu._GENERIC["bgmv_shrink"] is not lora_cpu.shrink  # vLLM's own op kept for mixed batches
