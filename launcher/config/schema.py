"""Typed configuration: what the user asked for, as Hydra structured configs.

Defaults live here; the YAML presets under conf/ only say what differs. Hydra composes into these dataclasses (so a
typo in an override fails with the field's name), then `__main__` converts once with `OmegaConf.to_object`, which
runs the `__post_init__` checks below. Where the job runs (the `topo` group) is launcher/config/topology.py.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List

from launcher.errors import LauncherError, choice, positive
from launcher.config.topology import TopoConfig


@dataclass
class PlanConfig:
    """How the model is split: ZeRO stage (0 = plain data parallel), offload, and the tp/pp degrees."""

    name: str = "zero2"
    description: str = "ZeRO-2: optimizer states and gradients sharded over data-parallel ranks"
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    tp: int = 1
    pp: int = 1
    sp: int = 1  # Ulysses sequence parallel: each sequence split over sp ranks (DeepSpeed ALST); dp = world / sp
    overlap_comm: bool = True
    # Communication sizes in 2**20 elements; 0 chooses them from the model (launcher/plan/comm_sizes.py says how).
    reduce_bucket_mb: int = 0
    allgather_bucket_mb: int = 0
    stage3_prefetch_mb: int = 0
    stage3_param_persistence_kb: int = 100
    stage3_fetch: str = "layer"  # layer: gather a decoder layer's weights in one fetch | module: each submodule's own
    compile: str = "off"  # off | torch (engine.compile); deepcompile is known and refused (plan_checks.py says why)
    # DeepSpeed keys the plan has no field for, merged into ds_config.json over what the plan renders:
    # +plan.deepspeed.zero_optimization.use_multi_rank_bucket_allreduce=false
    deepspeed: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        choice("plan.zero_stage", str(self.zero_stage), ("0", "1", "2", "3"))
        choice("plan.compile", self.compile, ("off", "torch", "deepcompile"))
        choice("plan.stage3_fetch", self.stage3_fetch, ("layer", "module"))
        for name in ("reduce_bucket_mb", "allgather_bucket_mb", "stage3_prefetch_mb"):
            if getattr(self, name) < 0:
                raise LauncherError(f"plan.{name}", getattr(self, name), "use 0 to have it chosen from the model "
                                    "(launcher/plan/comm_sizes.py), or a positive size in units of 2**20 elements")
        positive("plan.stage3_param_persistence_kb", self.stage3_param_persistence_kb, allow_zero=True)
        positive("plan.tp", self.tp)
        positive("plan.pp", self.pp)
        positive("plan.sp", self.sp)
        if self.offload_params and self.zero_stage != 3:
            raise LauncherError("plan.offload_params", True, "parameter offload needs ZeRO-3: use +plan=zero3_offload")
        if self.offload_optimizer and self.zero_stage == 0:
            raise LauncherError("plan.offload_optimizer", True, "optimizer offload needs ZeRO 1-3: use +plan=zero3_offload")


SDPA_BACKENDS = ("auto", "torch", "cudnn", "flash", "efficient", "math")


@dataclass
class ArchConfig:
    """Decoder shape. For `tiny` it builds the model; for hub presets it feeds the estimates without a download."""

    model_type: str = "llama"
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vocab_size: int = 0  # 0: take the tokenizer's size (tiny model only)
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False


@dataclass
class ModelConfig:
    """A Hugging Face causal LM: `path` is a hub id or a local directory; empty builds the tiny model from `arch`."""

    name: str = "tiny"
    path: str = ""
    tokenizer: str = ""
    revision: str = ""
    attn_implementation: str = "sdpa"
    # which SDPA kernel goes first (launcher/train/attention.py): auto measures cuDNN against torch's order on the GPU
    sdpa_backend: str = "auto"  # auto | torch | cudnn | flash | efficient | math
    liger_kernel: bool = True  # on CUDA, when liger-kernel is installed: its fused RMSNorm, SwiGLU, RoPE, loss kernels
    liger_fused_loss: bool = True  # with liger: the fused linear cross-entropy (false: transformers' loss on logits)
    trust_remote_code: bool = False
    arch: ArchConfig = field(default_factory=ArchConfig)

    def __post_init__(self) -> None:
        choice("model.sdpa_backend", self.sdpa_backend, SDPA_BACKENDS)


@dataclass
class DataConfig:
    """Instruction data in alpaca or sharegpt form (LLaMA-Factory's shapes): one file (`path`; empty is the small set
    the project ships) or `datasets`, a list of registry names (`registry`: a LLaMA-Factory dataset_info.json), files
    or hub ids, mixed by `weights`. Validation: `val_size` rows held out of the training sets (a fraction, or a row
    count when >= 1), or separate `eval_path` / `eval_datasets`; train.eval_every says how often it is scored."""

    name: str = "default"
    path: str = ""
    format: str = "alpaca"  # alpaca | sharegpt: for data.path, data.eval_path and plain files in data.datasets
    registry: str = ""
    datasets: List[str] = field(default_factory=list)
    weights: List[float] = field(default_factory=list)
    val_size: float = 0.0
    eval_path: str = ""
    eval_datasets: List[str] = field(default_factory=list)
    packing: bool = False
    max_samples: int = 0  # per data set: its first N usable rows (0: all)
    cache: bool = True  # keep the tokenized set in $LAUNCHER_CACHE_DIR (~/.cache/launcher): relaunches skip tokenizing

    def __post_init__(self) -> None:
        choice("data.format", self.format, ("alpaca", "sharegpt"))
        positive("data.max_samples", self.max_samples, allow_zero=True)
        if self.path and self.datasets:
            raise LauncherError("data.datasets", list(self.datasets), "give one file as data.path or a list as "
                                "data.datasets (a plain path may stand in that list), not both",
                                problem=f"data.path={self.path} is set too")
        if self.registry and not self.datasets and not self.eval_datasets:
            raise LauncherError("data.registry", self.registry, "name the entries to train on: "
                                "data.datasets=[NAME,...] (and data.eval_datasets=[NAME] for a validation set)",
                                problem="no data.datasets are named")
        if self.val_size < 0 or (self.val_size >= 1 and self.val_size != int(self.val_size)):
            raise LauncherError("data.val_size", self.val_size, "give a fraction between 0 and 1 (0.1 holds out a "
                                "tenth of each training set) or a whole number of rows (200); 0 holds out nothing")
        if self.val_size and (self.eval_path or self.eval_datasets):
            raise LauncherError("data.val_size", self.val_size, "use data.val_size=0 with a separate validation set, "
                                "or drop data.eval_path / data.eval_datasets to split one off the training data",
                                problem="a separate validation set is given too")
        if self.eval_path and self.eval_datasets:
            raise LauncherError("data.eval_datasets", list(self.eval_datasets), "give data.eval_path or "
                                "data.eval_datasets, not both", problem=f"data.eval_path={self.eval_path} is set too")
        if self.weights:
            from launcher.data.mixing import check_mix

            check_mix(list(self.datasets) or [self.path or "the shipped data set"], list(self.weights))

    @property
    def has_validation(self) -> bool:
        return bool(self.val_size or self.eval_path or self.eval_datasets)


@dataclass
class MethodConfig:
    """What is trained: all weights, LoRA adapters, or LoRA on a 4-bit (nf4) base."""

    name: str = "full"  # full | lora | qlora
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: List[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    def __post_init__(self) -> None:
        choice("method.name", self.name, ("full", "lora", "qlora"))


@dataclass
class TrainConfig:
    """Optimization: the global batch is the invariant; micro batch and accumulation follow from the topology."""

    global_batch_size: int = 8
    # a number, or auto: on a GPU the largest that the memory estimate fits with headroom and that divides
    # global batch / dp (plan/micro_batch.py); on a CPU, which the estimate models no device memory of, 2
    micro_batch_size: Any = "auto"
    seq_len: int = 256
    max_steps: int = 40
    epochs: int = 0  # >0: train this many epochs instead of max_steps
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 4
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    precision: str = "auto"  # auto | bf16 | fp16 | fp32 | fp8 (bf16, large matmuls in float8: launcher/train/fp8.py)
    gradient_checkpointing: bool = False
    # DeepSpeed's tiled MLP (long sequences: the MLP's activations of one slice at a time, for a second MLP forward):
    # auto = on CUDA when a rank holds long enough rows (plan/memory.py: tiled_mlp_applies) | on | off
    tiled_mlp: str = "auto"
    seed: int = 1234
    save_every: int = 20
    log_every: int = 1
    keep_last: int = 3
    profile_steps: str = ""  # "8-10": torch.profiler over these global steps, trace and top operators in profile/
    gc_interval: int = 50  # Python's collector runs every N global steps on every rank at once; 0: its own thresholds
    eval_every: int = 0  # score the validation set every N global steps (and after the last); 0: after the last only
    # a loss or gradient norm that is not finite (inf/NaN): stop = the run stops at that step without saving, naming
    # it (rerunning resumes from the newest checkpoint); skip = DeepSpeed checks every gradient before each bf16 step
    # and skips a step with one (its own default; ~10% of a micro-4 step of a 1.1B model in an H100 profile)
    nonfinite: str = "stop"

    def __post_init__(self) -> None:
        self.micro_batch_size = _micro_batch(self.micro_batch_size)
        for name in ("global_batch_size", "seq_len", "log_every"):
            positive(f"train.{name}", getattr(self, name))
        for name in ("max_steps", "epochs", "save_every", "warmup_steps", "keep_last", "gc_interval", "eval_every"):
            positive(f"train.{name}", getattr(self, name), allow_zero=True)
        if self.max_steps == 0 and self.epochs == 0:
            raise LauncherError("train.max_steps", 0, "set train.max_steps to a positive number or train.epochs")
        choice("train.precision", self.precision, ("auto", "bf16", "fp16", "fp32", "fp8"))
        choice("train.tiled_mlp", self.tiled_mlp, ("auto", "on", "off"))
        choice("train.nonfinite", self.nonfinite, ("stop", "skip"))
        self.profile_steps = str(self.profile_steps).strip()
        span = re.fullmatch(r"(\d+)(?:-(\d+))?", self.profile_steps)
        if self.profile_steps and not (span and 0 < int(span[1]) <= int(span[2] or span[1])):
            raise LauncherError("train.profile_steps", self.profile_steps, "give one global step (9) or a range of "
                                "them (8-10), counted from 1; empty profiles nothing")
        if self.lr <= 0:
            raise LauncherError("train.lr", self.lr, "the learning rate must be positive")


def _micro_batch(value: Any) -> int | str:
    """train.micro_batch_size: a positive number or "auto" (also as the string of a number, from a YAML file)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise LauncherError("train.micro_batch_size", value, "give a positive number of sequences per GPU and step, or "
                        "auto (the largest that fits on a GPU; 2 on a CPU)")


@dataclass
class RunConfig:
    """Where results go and how this invocation behaves; `name` defaults to model-method-plan so a rerun resumes."""

    name: str = ""
    dir: str = ""
    output_dir: str = "runs"
    resume: str = "auto"  # auto | never | <checkpoint path> | <global step>
    dry_run: bool = False
    check_memory: bool = True  # refuse a plan whose memory estimate does not fit (false: launch anyway)
    launcher: str = "torchrun"  # torchrun | deepspeed
    max_restarts: int = 0
    restart_backoff_s: float = 5.0
    collective_timeout_s: int = 600  # a collective that waits longer names the ranks and points at preflight
    # ranks on other hosts than the launcher's stop when its lease has not been renewed for this long (launcher.lease)
    lease_timeout_s: float = 8.0
    debug: bool = False

    def __post_init__(self) -> None:
        choice("run.launcher", self.launcher, ("torchrun", "deepspeed"))
        positive("run.max_restarts", self.max_restarts, allow_zero=True)
        if self.lease_timeout_s < 3:
            from launcher.errors import LauncherError

            raise LauncherError("run.lease_timeout_s", self.lease_timeout_s, "use 3 seconds or more (the launcher "
                                "renews its lease every second; on a slow shared filesystem raise it)")


@dataclass
class WandbConfig:
    """Weights & Biases: offline unless a key is set (auto); the key is read from the environment, never written."""

    mode: str = "auto"  # auto | online | offline | disabled
    project: str = "launcher"
    entity: str = ""

    def __post_init__(self) -> None:
        choice("logging.wandb.mode", self.mode, ("auto", "online", "offline", "disabled"))


@dataclass
class LoggingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class LauncherConfig:
    hostfile: str = ""  # a DeepSpeed hostfile (`host slots=N` lines): launch on those hosts over ssh
    topo: TopoConfig = field(default_factory=TopoConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    preflight: str = "auto"  # auto | quick | full | skip: checks before the launch (python -m launcher.preflight)
    # Bring your own training script (launcher/script/launch.py): run it on every rank instead of the built-in job;
    # everything after a literal `--` on the command line goes to it.
    script: str = ""  # path of a .py file, or "-m pkg.module"
    script_module: str = ""  # the same as script="-m pkg.module"
    script_api: str = "auto"  # auto | hf_trainer | accelerate | plain: what the launcher passes to the script


def register() -> None:
    """Register the schema so conf/config.yaml can name it in its defaults list. Hydra is imported here, not at
    the top: each rank reads these dataclasses from plan.json, and Hydra's import costs it ~0.4 s of start-up."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="launcher_schema", node=LauncherConfig)
