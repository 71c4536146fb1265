"""Which kernels make the 1.14B Llama of bench/perf.py fastest per micro batch, before the engine (issue 27): the
model's forward and backward alone (no optimizer, no DeepSpeed), bf16 weights as under DeepSpeed's bf16 mode, one
micro batch of 16 x 2048 tokens with the loss on every token. Each variant runs in a process of its own (liger's
patches are global):

- eager: transformers' own kernels (SDPA attention), torch's cross-entropy
- liger: what the launcher applies (liger's RMSNorm, SwiGLU, RoPE, fused linear cross-entropy)
- liger-addnorm: liger, and the residual add before each layer's second norm fused into it (liger's fused add+RMSNorm)
- liger-addnorm-all: liger, and every residual add fused into the norm that follows it (the next layer's first norm,
  the final norm): the layer hands its residual to the next one aside (no activation checkpointing, as here)
- compiled: each decoder layer compiled by torch.compile (inductor fuses norms, residual adds, RoPE and SwiGLU), the
  fused linear cross-entropy kept from liger
- compiled-liger: each decoder layer compiled with liger's kernels inside

Prints one Markdown row per variant: ms per micro batch (median of the timed ones), tokens/s, and the peak memory of
the timed micro batches (a compiled layer may keep other activations, which moves the micro batch auto can fit).

On a lent GPU machine, from the project root:  source .device/setup.sh && python3 bench/layer_speed.py
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("eager", "liger", "liger-addnorm", "liger-addnorm-all", "compiled", "compiled-liger")


def build(variant: str, micro: int, seq: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(REPO))
    from bench.perf import GPU_SPEC as s

    config = LlamaConfig(hidden_size=s.hidden_size, num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads,
                         num_key_value_heads=s.num_kv_heads, intermediate_size=s.intermediate_size,
                         vocab_size=s.vocab_size, max_position_embeddings=seq, attn_implementation="sdpa")
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(dtype=torch.bfloat16)
    model.config.use_cache = False
    if variant != "eager":
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        layers_too = variant != "compiled"
        _apply_liger_kernel_to_instance(model=model, rope=layers_too, rms_norm=layers_too, swiglu=layers_too,
                                        cross_entropy=False, fused_linear_cross_entropy=True)
    if variant == "liger-addnorm":
        fuse_second_add(model)
    if variant == "liger-addnorm-all":
        fuse_every_add(model)
    if variant.startswith("compiled"):
        torch._dynamo.config.recompile_limit = 64
        torch._dynamo.config.accumulated_recompile_limit = 256
        for layer in model.model.layers:
            layer.compile(dynamic=False)
    ids = torch.randint(0, s.vocab_size, (micro, seq), device="cuda")
    return model, ids


def fuse_second_add(model) -> None:
    """Each decoder layer's `residual + attention` and post-attention RMSNorm as one liger kernel."""
    import types

    from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction

    def forward(self, hidden_states, attention_mask=None, position_ids=None, position_embeddings=None, **kwargs):
        residual = hidden_states
        h = self.input_layernorm(hidden_states)
        h, _ = self.self_attn(hidden_states=h, attention_mask=attention_mask, position_ids=position_ids,
                              position_embeddings=position_embeddings, **kwargs)
        norm = self.post_attention_layernorm
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        h, residual = LigerFusedAddRMSNormFunction.apply(h, residual, norm.weight, eps, 0.0, "llama", False)
        return residual + self.mlp(h)

    for layer in model.model.layers:
        layer.forward = types.MethodType(forward, layer)


def fuse_every_add(model) -> None:
    """Each layer returns its MLP output without the residual add; the next norm (the next layer's first, or the
    model's last) adds it in the same kernel. The residual passes between them in `pending`."""
    import types

    from liger_kernel.ops.fused_add_rms_norm import LigerFusedAddRMSNormFunction

    pending: list = []

    def add_norm(norm, x, residual):
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        return LigerFusedAddRMSNormFunction.apply(x, residual, norm.weight, eps, 0.0, "llama", False)

    def layer_forward(self, hidden_states, attention_mask=None, position_ids=None, position_embeddings=None,
                      **kwargs):
        if pending:
            h, residual = add_norm(self.input_layernorm, hidden_states, pending.pop())
        else:
            residual, h = hidden_states, self.input_layernorm(hidden_states)
        h, _ = self.self_attn(hidden_states=h, attention_mask=attention_mask, position_ids=position_ids,
                              position_embeddings=position_embeddings, **kwargs)
        h, residual = add_norm(self.post_attention_layernorm, h, residual)
        pending.append(residual)
        return self.mlp(h)

    def norm_forward(self, hidden_states):
        return add_norm(self, hidden_states, pending.pop())[0] if pending else type(self).forward(self, hidden_states)

    for layer in model.model.layers:
        layer.forward = types.MethodType(layer_forward, layer)
    model.model.norm.forward = types.MethodType(norm_forward, model.model.norm)


def measure(variant: str, micro: int, seq: int, warmup: int, steps: int) -> dict:
    import torch

    model, ids = build(variant, micro, seq)
    start = time.perf_counter()

    def step() -> None:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=False)

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    first = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    ms = statistics.median(times)
    return {"variant": variant, "ms": ms, "tokens_s": micro * seq / ms * 1e3, "spread": (min(times), max(times)),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "warmup_s": first}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--micro", type=int, default=16)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one:
        print("RESULT " + json.dumps(measure(a.one, a.micro, a.seq, a.warmup, a.steps)), flush=True)
        return
    import torch

    print(f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; micro {a.micro} x {a.seq} tokens, "
          f"median of {a.steps} after {a.warmup} warm-up")
    print("| variant | ms per micro batch | tokens/s | vs liger | spread ms | peak GiB | warm-up s |")
    print("|---|---|---|---|---|---|---|")
    rows = {}
    for v in a.variants.split(","):
        cmd = [sys.executable, __file__, "--one", v, "--micro", str(a.micro), "--seq", str(a.seq),
               "--warmup", str(a.warmup), "--steps", str(a.steps)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        found = [json.loads(x[7:]) for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not found:
            print(f"| {v} | failed: {' / '.join(out.stderr.strip().splitlines()[-3:])[:400]} | | | | | |", flush=True)
            continue
        r = rows[v] = found[0]
        base = rows.get("liger")
        rel = f"{base['ms'] / r['ms']:.3f}x" if base else ""
        print(f"| {v} | {r['ms']:.1f} | {r['tokens_s']:,.0f} | {rel} | {r['spread'][0]:.1f}-{r['spread'][1]:.1f} "
              f"| {r['peak_gib']:.1f} | {r['warmup_s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
