"""model.sdpa_backend: the choice between cuDNN-first and torch's SDPA order, the attention shape a rank measures,
and the measurement itself (on the CPU, where cuDNN cannot serve, so both orders run the same kernel)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.nn.attention import SDPBackend

from launcher.errors import LauncherError
from launcher.config.schema import ModelConfig
from launcher.train import attention
from launcher.train.attention import AttentionShape, attention_shape, backend_order, choose, measure, why_not_measured


def test_cudnn_goes_first_only_when_clearly_faster_and_equal_in_results():
    assert choose({"torch": 10.0, "cudnn": 5.0}, agrees=True) == "cudnn"
    assert choose({"torch": 10.0, "cudnn": 9.5}, agrees=True) == "torch"  # a near tie keeps torch's order
    assert choose({"torch": 10.0, "cudnn": 5.0}, agrees=False) == "torch"  # faster but different: never
    assert choose({"torch": 10.0, "cudnn": 12.0}, agrees=True) == "torch"


def test_a_preferred_backend_goes_first_and_the_rest_keep_torchs_order_for_fallback():
    default = [SDPBackend(i) for i in torch._C._get_sdp_priority_order()]
    for first, backend in (("cudnn", SDPBackend.CUDNN_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION),
                           ("math", SDPBackend.MATH)):
        order = backend_order(first)
        assert order[0] == backend and len(order) == len(set(order)) == 4
        assert order[1:] == [b for b in default if b in order[1:]]
    assert SDPBackend.MATH in backend_order("cudnn")  # a shape no fused kernel serves still runs


def test_the_measured_shape_is_the_ranks_own_heads_of_the_models_config():
    llama_1b = SimpleNamespace(num_attention_heads=16, num_key_value_heads=8, hidden_size=2048)
    assert attention_shape(llama_1b, 16, 2048, 1) == AttentionShape(16, 16, 8, 2048, 128)
    assert attention_shape(llama_1b, 1, 32768, 4) == AttentionShape(1, 4, 2, 32768, 128)  # tp x sp = 4
    assert attention_shape(llama_1b, 1, 4096, 16) == AttentionShape(1, 1, 1, 4096, 128)  # kv heads replicated
    explicit = SimpleNamespace(num_attention_heads=8, num_key_value_heads=None, hidden_size=2048, head_dim=64)
    assert attention_shape(explicit, 2, 512, 1) == AttentionShape(2, 8, 8, 512, 64)
    assert str(attention_shape(llama_1b, 16, 2048, 1)) == "micro 16 x 16 heads (8 kv) x 2048 tokens x 128"


def test_auto_measures_only_where_it_can_tell():
    assert why_not_measured("cuda", "sdpa", False) == ""
    assert "CUDA" in why_not_measured("cpu", "sdpa", False)
    assert "eager" in why_not_measured("cuda", "eager", False)
    assert "mask" in why_not_measured("cuda", "sdpa", True)


def test_an_unknown_backend_is_refused_naming_the_field_and_the_choices():
    with pytest.raises(LauncherError) as err:
        ModelConfig(sdpa_backend="fast")
    assert "model.sdpa_backend" in str(err.value) and "auto, torch, cudnn, flash" in str(err.value)


def test_the_measurement_times_both_orders_and_compares_output_and_gradients():
    """On the CPU both orders run the same kernel: equal results, and two positive timings; grouped heads included."""
    for shape in (AttentionShape(2, 4, 2, 64, 16), AttentionShape(1, 2, 2, 32, 8)):
        times, agrees = measure(shape, torch.device("cpu"))
        assert set(times) == {"torch", "cudnn"} and all(t > 0 for t in times.values())
        assert agrees


def test_results_that_differ_beyond_rounding_are_caught():
    a = torch.ones(4, 4)
    assert attention._close(a + 1e-3, a)
    assert not attention._close(a * 1.1, a)


def test_an_explicit_backend_sets_the_processes_priority(monkeypatch):
    """model.sdpa_backend=flash (say) puts flash first for the rest of the rank; torch's own order is left alone."""
    before = torch._C._get_sdp_priority_order()
    plan = SimpleNamespace(accelerator="cpu")
    try:
        assert attention.apply_sdpa_backend("torch", plan, None, torch.device("cpu")) == "torch"
        assert torch._C._get_sdp_priority_order() == before
        assert attention.apply_sdpa_backend("math", plan, None, torch.device("cpu")) == "math"
        assert torch._C._get_sdp_priority_order()[0] == int(SDPBackend.MATH)
        q = torch.randn(1, 2, 8, 4)
        torch.testing.assert_close(torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True),
                                   torch.softmax((q @ q.transpose(-1, -2) / 2).masked_fill(
                                       torch.ones(8, 8).triu(1).bool(), float("-inf")), -1) @ q)
    finally:
        while attention._held:
            attention._held.pop().__exit__(None, None, None)
    assert torch._C._get_sdp_priority_order() == before


def job(**kw):
    return SimpleNamespace(accelerator="cuda", model=SimpleNamespace(attn_implementation="sdpa"),
                           data=SimpleNamespace(packing=False), micro_batch_size=2, train=SimpleNamespace(seq_len=64),
                           tp=1, sp=1, **kw)


CONFIG = SimpleNamespace(num_attention_heads=4, num_key_value_heads=2, hidden_size=64)


def test_auto_measures_both_orders_and_sets_what_it_chose(caplog):
    """The whole auto path on the CPU's kernels (one process, no process group). Both orders run the same CPU kernel,
    so which wins is timing noise: what is checked is that the log line gives both times and that the priority set
    is the one chosen."""
    before = torch._C._get_sdp_priority_order()
    try:
        with caplog.at_level("INFO", logger="launcher"):
            choice = attention.apply_sdpa_backend("auto", job(), CONFIG, torch.device("cpu"))
        line = caplog.messages[-1]
        assert line.startswith(f"attention: {'cuDNN first' if choice == 'cudnn' else 'torch order'} (forward+backward "
                               "at micro 2 x 4 heads (2 kv) x 64 tokens x 16: cuDNN first ")
        assert "torch's order" in line and "differ" not in line
        order = torch._C._get_sdp_priority_order()
        if choice == "cudnn":
            assert order[0] == int(SDPBackend.CUDNN_ATTENTION)
        else:
            assert order == before
    finally:
        while attention._held:
            attention._held.pop().__exit__(None, None, None)
    assert torch._C._get_sdp_priority_order() == before


def test_a_kernel_that_fails_during_the_measurement_leaves_torchs_order_and_the_rank_running(monkeypatch, caplog):
    """cuDNN raising for a shape it claims (a frontend error) must not end the rank at its start."""
    def failing(shape, device):
        raise RuntimeError("cuDNN Frontend error: No valid execution plans built.\nmore")

    monkeypatch.setattr(attention, "measure", failing)
    before = torch._C._get_sdp_priority_order()
    with caplog.at_level("INFO", logger="launcher"):
        assert attention.apply_sdpa_backend("auto", job(), CONFIG, torch.device("cpu")) == "torch"
    assert torch._C._get_sdp_priority_order() == before
    assert "not measured at micro 2 x 4 heads (2 kv) x 64 tokens x 16: RuntimeError: cuDNN Frontend error: No valid " \
           "execution plans built." in caplog.messages[-1]
