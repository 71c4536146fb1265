"""The pipeline's layers (launcher/train/pipeline.py) compute exactly what the Hugging Face model computes, for each
decoder family, attention implementation, tied or untied head, padded or packed rows and LoRA; and the export's
name mapping covers every weight. One in-process DeepSpeed PipelineModule of one stage over gloo, no launcher."""
from __future__ import annotations

import os
import socket

import pytest
import torch

from launcher.config.compose import compose
from launcher.plan.hardware import Hardware
from launcher.plan.resolve import resolve

pytestmark = pytest.mark.integration
FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]


@pytest.fixture(scope="module")
def one_rank_group():
    """A world of one process: PipelineModule needs a process group even for one stage."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    torch.distributed.destroy_process_group()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def tiny(model_type: str, attn: str, tied: bool = False, lora: bool = False) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {"sliding_window": 4} if model_type == "mistral" else {}  # shorter than the rows: the window matters
    config = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                                  tie_word_embeddings=tied, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"]))
        for name, p in model.named_parameters():  # adapters that change the output, unlike peft's zero init
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
    return model.eval()


def pipeline_of(model: torch.nn.Module, packed: bool = False):
    from deepspeed.pipe import PipelineModule

    from launcher.train.pipeline import NormalisedLoss, pipeline_layers

    return PipelineModule(layers=pipeline_layers(model, packed), num_stages=1, loss_fn=NormalisedLoss(per_micro=7.0),
                          partition_method="parameters").eval()


def padded_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def run_pipeline(pipe, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    from launcher.train.pipeline import pipeline_inputs

    inputs, labels = pipeline_inputs(batch)
    device = next(pipe.parameters()).device
    with torch.no_grad():
        logits = pipe(tuple(t.to(device) for t in inputs))
        loss = pipe.loss_fn(logits, labels.to(device))
    return logits.cpu(), loss.cpu()


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", FAMILIES)
def test_pipeline_layers_reproduce_the_hf_model_with_padding(one_rank_group, family, attn, tied):
    model = tiny(family, attn, tied)
    batch = padded_batch()
    with torch.no_grad():
        ref = model(**batch, num_items_in_batch=torch.tensor(7.0), use_cache=False)
    logits, loss = run_pipeline(pipeline_of(model), batch)
    torch.testing.assert_close(logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, ref.loss, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_pipeline_layers_are_causal(one_rank_group, attn):
    """With eager attention an absent mask is silently bidirectional: a later token must not move earlier logits."""
    pipe = pipeline_of(tiny("llama", attn))
    batch = {k: v[:1] for k, v in padded_batch().items()}
    changed = {**batch, "input_ids": batch["input_ids"].clone()}
    changed["input_ids"][0, -1] = (changed["input_ids"][0, -1] + 1) % 97
    before, _ = run_pipeline(pipe, batch)
    after, _ = run_pipeline(pipe, changed)
    torch.testing.assert_close(before[:, :-1], after[:, :-1], rtol=0, atol=0)
    assert not torch.equal(before[:, -1], after[:, -1])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_packed_rows_keep_documents_apart_as_in_the_hf_model(one_rank_group, family, attn):
    model = tiny(family, attn)
    ids = torch.randint(0, 97, (1, 10), generator=torch.Generator().manual_seed(2))
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]])
    labels = ids.clone()
    with torch.no_grad():
        ref = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    logits, _ = run_pipeline(pipeline_of(model, packed=True),
                             {"input_ids": ids, "position_ids": positions, "labels": labels})
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)


def test_lora_model_on_a_pipeline_keeps_its_adapters(one_rank_group):
    model = tiny("qwen3", "sdpa", lora=True)
    batch = padded_batch()
    with torch.no_grad():
        ref = model(**batch, use_cache=False).logits
    pipe = pipeline_of(model)
    logits, _ = run_pipeline(pipe, batch)
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)
    trainable = [n for n, p in pipe.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("overrides", [(), ("model.arch.tie_word_embeddings=true",), ("method=lora",),
                                       ("model.arch.model_type=qwen3", "model.arch.tie_word_embeddings=true",
                                        "method=lora")], ids=["untied", "tied", "lora", "qwen3-tied-lora"])
def test_export_names_cover_every_weight_of_the_model(overrides):
    """Each pipeline layer's keys map to the model's own names, and together they name every weight once or more."""
    from launcher.checkpoint.export_parallel import empty_model, pipeline_layer_names

    cfg, _ = compose(["+plan=pp", *overrides])
    plan = resolve(cfg, Hardware("cpu", 0, "", 0.0, "", False, 2, 24.0, "x86_64"), run_dir="/r", run_name="x")
    names = pipeline_layer_names(plan)
    mapped = {n for layer in names for ns in layer.values() for n in ns}
    assert mapped == set(empty_model(plan).state_dict())
    assert names[1]  # the first decoder layer's file has keys
