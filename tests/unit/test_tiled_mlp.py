"""DeepSpeed's tiled MLP on the model's MLP blocks gives the same loss and gradients as the untiled model."""
from __future__ import annotations

import copy

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from launcher.train.tiled_mlp import apply_tiled_mlp


def test_tiled_mlp_keeps_the_loss_and_every_gradient():
    config = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=97)
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    tiled = copy.deepcopy(plain)
    assert apply_tiled_mlp(tiled) == 2
    ids = torch.randint(0, 97, (2, 200))  # 200 tokens over a hidden size of 64: 4 slices per MLP
    losses = []
    for model in (plain, tiled):
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=0)
    for (name, a), (_, b) in zip(plain.named_parameters(), tiled.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)


def test_short_sequences_and_no_grad_forwards_run_the_mlp_as_it_is():
    config = AutoConfig.for_model("llama", hidden_size=64, intermediate_size=160, num_hidden_layers=1,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=97)
    model = AutoModelForCausalLM.from_config(config)
    apply_tiled_mlp(model)
    with torch.no_grad():
        assert model(input_ids=torch.randint(0, 97, (1, 300)), use_cache=False).logits.shape == (1, 300, 97)
    assert model(input_ids=torch.randint(0, 97, (1, 40)), use_cache=False).logits.requires_grad
