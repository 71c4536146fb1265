"""Pipeline parallelism: a Hugging Face decoder cut into DeepSpeed PipelineModule layers, and its training step.

Layers, in order: embedding, one entry per decoder layer, final norm, LM head. Between stages travels the tuple
(hidden states, 2-D attention mask, position ids); every stage rebuilds the causal mask and the rotary embeddings
from it, because decoder layers in transformers 5.x take both as arguments (with eager attention a missing mask
is silently not causal). The step keeps the loop's invariant: each micro batch's loss is its summed token loss
divided by the global batch's target tokens / (dp x grad_accum), so a step's loss equals the DDP run's.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from launcher.plan.types import Plan
from launcher.train.batching import batch_tokens, rank_micro_batches, step_target_tokens

Activations = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
log = logging.getLogger("launcher")


def decoder_parts(model: nn.Module) -> tuple[Any, nn.Module, nn.Module]:
    """(config, backbone, lm_head) of a causal LM, under a peft wrapper or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(base, base.base_model_prefix)
    return base.config, backbone, base.get_output_embeddings()


def layer_attention_type(config: Any, index: int) -> str:
    """Which mask a decoder layer gets: Qwen2/3 list it per layer; Mistral slides everywhere when a window is set."""
    types = getattr(config, "layer_types", None)
    if types:
        return types[index]
    return "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"


@functools.cache
def _mask_params(fn: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(fn).parameters)


def causal_mask(kind: str, config: Any, hidden: torch.Tensor, mask_2d: torch.Tensor | None,
                position_ids: torch.Tensor) -> Any:
    """The mask the HF model itself would build (the argument names moved between transformers 5.x releases)."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    fn = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
    params = _mask_params(fn)
    kwargs: dict[str, Any] = {"config": config, "attention_mask": mask_2d, "position_ids": position_ids}
    kwargs["inputs_embeds" if "inputs_embeds" in params else "input_embeds"] = hidden
    if "cache_position" in params:
        kwargs["cache_position"] = torch.arange(hidden.shape[1], device=hidden.device)
    for name in ("cache", "past_key_values"):
        if name in params:
            kwargs[name] = None
    return fn(**kwargs)


class EmbeddingPipe(nn.Module):
    """First stage: token ids -> hidden states; passes the mask and positions on."""

    def __init__(self, embed_tokens: nn.Module) -> None:
        super().__init__()
        self.embed_tokens = embed_tokens

    def forward(self, inputs: Activations) -> Activations:
        input_ids, mask_2d, position_ids = inputs
        return self.embed_tokens(input_ids), mask_2d, position_ids


class DecoderLayerPipe(nn.Module):
    """One HF decoder layer, given the causal mask and rotary embeddings it expects. `packed` rows carry their
    document boundaries in position_ids only, so their mask must be built with attention_mask=None."""

    def __init__(self, layer: nn.Module, rotary_emb: nn.Module, config: Any, index: int, packed: bool) -> None:
        super().__init__()
        self.layer = layer
        self.rotary_emb = rotary_emb
        self.config = config
        self.kind = layer_attention_type(config, index)
        self.packed = packed

    def forward(self, inputs: Activations) -> Activations:
        hidden, mask_2d, position_ids = inputs
        mask = causal_mask(self.kind, self.config, hidden, None if self.packed else mask_2d, position_ids)
        out = self.layer(hidden, attention_mask=mask, position_ids=position_ids,
                         position_embeddings=self.rotary_emb(hidden, position_ids), use_cache=False)
        return out[0] if isinstance(out, tuple) else out, mask_2d, position_ids


class FinalNormPipe(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, inputs: Activations) -> torch.Tensor:
        return self.norm(inputs[0])


class LMHeadPipe(nn.Module):
    def __init__(self, lm_head: nn.Module) -> None:
        super().__init__()
        self.lm_head = lm_head

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)


def _tied_head(module: EmbeddingPipe, hidden: torch.Tensor) -> torch.Tensor:
    return nn.functional.linear(hidden, module.embed_tokens.weight)


def pipeline_layers(model: nn.Module, packed: bool) -> list[Any]:
    """Embedding, decoder layers, final norm, LM head. A trained tied embedding becomes a TiedLayerSpec on the
    first and last stage, so DeepSpeed sums its two gradients; a frozen one (LoRA) is simply shared."""
    from deepspeed.pipe import TiedLayerSpec

    config, backbone, lm_head = decoder_parts(model)
    embed = backbone.embed_tokens
    tied = lm_head.weight is embed.weight and embed.weight.requires_grad
    first: Any = TiedLayerSpec("embed", EmbeddingPipe, embed, tied_weight_attr="embed_tokens.weight") if tied \
        else EmbeddingPipe(embed)
    last: Any = TiedLayerSpec("embed", EmbeddingPipe, embed, forward_fn=_tied_head,
                              tied_weight_attr="embed_tokens.weight") if tied else LMHeadPipe(lm_head)
    layers = [DecoderLayerPipe(layer, backbone.rotary_emb, config, i, packed) for i, layer in enumerate(backbone.layers)]
    return [first, *layers, FinalNormPipe(backbone.norm), last]


@dataclass
class NormalisedLoss:
    """loss_fn of the PipelineModule: summed token loss / `per_micro`, set before each step; keeps this stage's
    micro-batch losses so the step can report them."""

    per_micro: float = 1.0
    losses: list[torch.Tensor] = field(default_factory=list)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        from transformers.loss.loss_utils import ForCausalLMLoss

        loss = ForCausalLMLoss(logits, labels, logits.shape[-1],
                               num_items_in_batch=torch.tensor(self.per_micro, device=logits.device))
        self.losses.append(loss.detach())
        return loss


def build_pipeline_module(model: nn.Module, plan: Plan) -> nn.Module:
    """The PipelineModule of plan.pp stages, partitioned by (trainable) parameters, variable shapes allowed."""
    from deepspeed.pipe import PipelineModule

    layers = pipeline_layers(model, plan.data.packing)
    with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed prints its partition table; the log gets a line
        module = PipelineModule(layers=layers, num_stages=plan.pp, loss_fn=NormalisedLoss(),
                                partition_method="parameters", dynamic_shape=True)
    stages = ", ".join(f"stage {i}: layers {a}-{b - 1}" for i, (a, b) in enumerate(zip(module.parts, module.parts[1:])))
    log.info(f"pipeline of {len(layers)} layers (embedding, {len(layers) - 3} decoder layers, norm, head): {stages}")
    if not any(p.requires_grad for p in module.parameters()):
        from launcher.errors import LauncherError

        raise LauncherError("plan.pp", plan.pp, "use fewer stages or method=full",
                            problem=f"pipeline stage {module.stage_id} holds no trainable parameter")
    return module


def pipeline_inputs(batch: dict[str, torch.Tensor]) -> tuple[Activations, torch.Tensor]:
    """A collated micro batch as DeepSpeed's pipeline reads it: ((ids, mask, positions), labels)."""
    ids = batch["input_ids"]
    mask = batch.get("attention_mask", torch.ones_like(ids))
    positions = batch.get("position_ids", torch.arange(ids.shape[1]).expand_as(ids).contiguous())
    return (ids, mask, positions), batch["labels"]


def probe_logits(engine: Any, ids: torch.Tensor) -> torch.Tensor | None:
    """Logits of `ids` through the whole pipeline (every rank calls it): DeepSpeed's inference schedule, then the
    last stage of the first data-parallel pipeline holds them and broadcasts them; rank 0 returns them, the others
    None."""
    import torch.distributed as dist

    batch = pipeline_inputs({"input_ids": ids, "labels": ids})  # the last stage loads labels, unused here
    was_training, step_loss = engine.module.training, engine.total_loss
    engine.total_loss = None  # eval_batch adds its outputs to the last step's summed loss; train_batch resets it
    _, logits = engine.eval_batch(iter([batch]), return_logits=True, compute_loss=False, reduce_output=None,
                                  num_micro_batches=1)
    engine.module.train(was_training)
    engine.total_loss = step_loss
    src = engine.grid.stage_to_global(engine.num_stages - 1, data=0)
    sent = [logits.float().cpu() if dist.get_rank() == src else None]
    dist.broadcast_object_list(sent, src=src)  # a few vocab-wide rows, once per save
    return sent[0] if dist.get_rank() == 0 else None


def train_step(engine: Any, examples: Sequence[Any], plan: Plan, info: Any, pad_id: int, step: int
               ) -> tuple[float, int, float | None]:
    """One optimizer step through engine.train_batch over the plan's grad_accum micro batches: this stage's
    summed micro-batch losses and tokens (both meaningful on the last stage), and the global grad norm."""
    t, g = plan.train, plan.global_batch_size
    targets = step_target_tokens(examples, t.seed, g, step)
    loss_fn: NormalisedLoss = engine.module.loss_fn
    loss_fn.per_micro = max(targets, 1) / (info.dp_size * plan.grad_accum)
    loss_fn.losses.clear()
    batches = list(rank_micro_batches(examples, t.seed, g, plan.micro_batch_size, plan.grad_accum, info.dp_rank,
                                      info.dp_size, step, pad_id))
    tokens = sum(batch_tokens(b) for b in batches)
    micro_batches = [pipeline_inputs(b) for b in batches]
    engine.train_batch(data_iter=iter(micro_batches))
    loss_sum = float(sum(loss.float().item() for loss in loss_fn.losses))
    grad_norm = engine.get_global_grad_norm()
    return loss_sum, tokens, float(grad_norm) if grad_norm is not None else None



def eval_loss_sum(engine: Any, batches: list[list[Any]], pad_id: int) -> float:
    """Summed token loss of this rank's validation batches through the pipeline, on its last stage (0.0 on the
    others). DeepSpeed's eval_batch averages per micro batch; the loss function here returns each micro batch's sum
    instead (per_micro = 1), so the caller can weight by tokens."""
    from launcher.train.batching import collate

    loss_fn: NormalisedLoss = engine.module.loss_fn
    per_micro, step_losses, step_loss = loss_fn.per_micro, list(loss_fn.losses), engine.total_loss
    loss_fn.per_micro = 1.0
    loss_fn.losses.clear()
    engine.total_loss = None  # eval_batch adds its outputs to the last step's summed loss; train_batch resets it
    micro_batches = [pipeline_inputs(collate(rows, pad_id)) for rows in batches]
    try:
        engine.eval_batch(iter(micro_batches), return_logits=False, compute_loss=True, reduce_output=None,
                          bcast_loss=False, num_micro_batches=len(micro_batches))
        return float(sum(loss.double().item() for loss in loss_fn.losses))
    finally:
        engine.module.train()
        engine.total_loss = step_loss
        loss_fn.per_micro = per_micro
        loss_fn.losses[:] = step_losses
