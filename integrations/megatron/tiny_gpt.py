"""A tiny Megatron-Core GPTModel trained on CPU/gloo under any TP x PP x DP layout, for the demo, the
benchmark, the GPU run and the equivalence tests (on CUDA when it is there; 3 layers and a vocab of
301 by default: neither divides evenly by the parallel sizes used)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from integrations.megatron import cpu_shims

SEQ, GLOBAL_BATCH = 8, 4  # divisible by DP 1, 2 and 4


@dataclass(frozen=True)
class Layout:
    tp: int = 1
    pp: int = 1
    dp: int = 1
    distributed_optimizer: bool = False

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp

    def __str__(self) -> str:
        return f"TP{self.tp}PP{self.pp}DP{self.dp}{'-distopt' if self.distributed_optimizer else ''}"


@dataclass(frozen=True)
class Arch:
    layers: int = 3
    hidden: int = 16
    heads: int = 4
    query_groups: int = 4
    ffn: int = 24
    vocab: int = 301
    vocab_divisible_by: int = 4  # 301 pads to 304 at TP 1, 2 and 4
    glu: bool = True

    def padded_vocab(self, tp: int) -> int:
        """Megatron's training script pads the vocab to a multiple of ``vocab_divisible_by * tp``."""
        m = self.vocab_divisible_by * tp
        return -(-self.vocab // m) * m


def init_parallel(layout: Layout) -> None:
    from megatron.core import parallel_state

    cpu_shims.enable()
    if layout.world != dist.get_world_size():
        raise ValueError(f"{layout} needs {layout.world} ranks, got {dist.get_world_size()}")
    parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(layout.tp, layout.pp)


def build(layout: Layout, arch: Arch = Arch(), seed: int = 0, lr: float = 0.01):
    """(model chunk wrapped in Megatron's DDP, Megatron optimizer, scheduler) at ``layout``."""
    from megatron.core import parallel_state
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
    from megatron.core.transformer import TransformerConfig

    init_parallel(layout)
    cpu_shims.seed_model_parallel_rng(seed)
    uneven = arch.layers % layout.pp != 0
    first = arch.layers - (layout.pp - 1) * (arch.layers // layout.pp) if uneven else None
    config = TransformerConfig(
        num_layers=arch.layers, hidden_size=arch.hidden, num_attention_heads=arch.heads,
        num_query_groups=arch.query_groups, ffn_hidden_size=arch.ffn, gated_linear_unit=arch.glu,
        tensor_model_parallel_size=layout.tp, pipeline_model_parallel_size=layout.pp,
        num_layers_in_first_pipeline_stage=first if uneven and layout.pp > 1 else None,
        num_layers_in_last_pipeline_stage=(arch.layers // layout.pp) if uneven and layout.pp > 1 else None,
        use_cpu_initialization=True, params_dtype=torch.float32, pipeline_dtype=torch.float32,
        bias_activation_fusion=False, masked_softmax_fusion=False, persist_layer_norm=False,
        bias_dropout_fusion=False, gradient_accumulation_fusion=False, apply_rope_fusion=False,
        hidden_dropout=0.0, attention_dropout=0.0, batch_p2p_comm=False, deterministic_mode=True,
    )
    model = GPTModel(
        config, get_gpt_layer_local_spec(), arch.padded_vocab(layout.tp), SEQ,
        pre_process=parallel_state.is_pipeline_first_stage(), post_process=parallel_state.is_pipeline_last_stage(),
    )
    if torch.cuda.is_available():
        model.cuda(torch.cuda.current_device())
    ddp = DistributedDataParallel(
        config, DistributedDataParallelConfig(use_distributed_optimizer=layout.distributed_optimizer), model
    )
    opt_config = OptimizerConfig(
        optimizer="adam", lr=lr, weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95, clip_grad=0.0,
        use_distributed_optimizer=layout.distributed_optimizer, bf16=False, fp16=False, min_lr=lr / 10,
    )
    optimizer = get_megatron_optimizer(opt_config, [ddp])
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=lr, min_lr=lr / 10, lr_warmup_steps=2, lr_decay_steps=20,
        lr_decay_style="cosine", start_wd=0.1, end_wd=0.1, wd_incr_steps=20, wd_incr_style="constant",
    )
    return ddp, optimizer, scheduler


def batch(step: int, arch: Arch = Arch()) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of ``step``: tokens and labels, [GLOBAL_BATCH, SEQ]."""
    g = torch.Generator().manual_seed(1000 + step)
    tokens = torch.randint(0, arch.vocab, (GLOBAL_BATCH, SEQ + 1), generator=g)
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def _forward_backward(ddp, step: int, arch: Arch, forward_only: bool) -> float | None:
    """One global batch (this DP rank's rows) through the pipeline; the mean loss on the last stage."""
    from megatron.core import parallel_state
    from megatron.core.pipeline_parallel import get_forward_backward_func

    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    tokens, labels = batch(step, arch)
    rows = slice(dp_rank * GLOBAL_BATCH // dp_size, (dp_rank + 1) * GLOBAL_BATCH // dp_size)
    tokens, labels = tokens[rows], labels[rows]
    device = next(ddp.parameters()).device
    tokens, labels = tokens.to(device), labels.to(device)
    positions = torch.arange(SEQ, device=device).expand_as(tokens)
    mask = torch.triu(torch.ones(1, 1, SEQ, SEQ, dtype=torch.bool, device=device), diagonal=1)

    def step_fn(_iterator, model):
        out = model(tokens, positions, mask, labels=labels)

        def loss_fn(per_token):
            loss = per_token.float().mean()
            return loss, {"loss": loss.detach()}

        return out, loss_fn

    losses = get_forward_backward_func()(
        forward_step_func=step_fn, data_iterator=iter([None]), model=[ddp], num_microbatches=1,
        seq_length=SEQ, micro_batch_size=tokens.shape[0], forward_only=forward_only,
    )
    if not parallel_state.is_pipeline_last_stage():
        return None
    loss = losses[0]["loss"].clone()
    dist.all_reduce(loss, group=parallel_state.get_data_parallel_group())
    return loss.item() / dp_size


def train(ddp, optimizer, scheduler, steps: range, arch: Arch = Arch()) -> list[float | None]:
    losses = []
    for step in steps:
        ddp.zero_grad_buffer()
        optimizer.zero_grad()
        losses.append(_forward_backward(ddp, step, arch, forward_only=False))
        ddp.finish_grad_sync()
        ok, _, _ = optimizer.step()
        assert ok, f"step {step}: Megatron's optimizer skipped the step"
        scheduler.step(increment=1)
    return losses


def eval_loss(ddp, step: int, arch: Arch = Arch()) -> float | None:
    with torch.no_grad():
        return _forward_backward(ddp, step, arch, forward_only=True)


def full_model(ddp) -> dict[str, torch.Tensor]:
    """Every tensor of the model whole, by Megatron key, assembled from every rank's
    ``sharded_state_dict()`` boxes (an independent check of what bytecheckpoint loaded)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject, ShardedTensorFactory

    mine = []
    for entry in ddp.module.sharded_state_dict().values():
        if isinstance(entry, ShardedObject):
            continue
        parts = entry.build() if isinstance(entry, ShardedTensorFactory) else [entry]
        for p in parts:
            lengths = (1,) * p.prepend_axis_num + tuple(p.local_shape)
            data = p.data.detach().reshape(lengths).clone().cpu()  # its own storage: a view pickles the whole buffer
            mine.append((p.key, tuple(p.global_shape), tuple(p.global_offset), data))
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    full: dict[str, torch.Tensor] = {}
    for key, shape, offsets, data in (x for rank in everyone for x in rank):
        if key not in full:
            full[key] = torch.full(shape, float("nan"))
        target = full[key]
        target[tuple(slice(o, o + n) for o, n in zip(offsets, data.shape))] = data
    return full


class _Layer(torch.nn.Module):
    def __init__(self, arch: Arch) -> None:
        super().__init__()
        from torch import nn

        self.arch = arch
        kv = arch.hidden // arch.heads
        self.input_layernorm = nn.LayerNorm(arch.hidden)
        self.self_attention = nn.Module()
        self.self_attention.linear_qkv = nn.Linear(arch.hidden, (arch.heads + 2 * arch.query_groups) * kv)
        self.self_attention.linear_proj = nn.Linear(arch.hidden, arch.hidden)
        self.pre_mlp_layernorm = nn.LayerNorm(arch.hidden)
        self.mlp = nn.Module()
        self.mlp.linear_fc1 = nn.Linear(arch.hidden, arch.ffn * (2 if arch.glu else 1))
        self.mlp.linear_fc2 = nn.Linear(arch.ffn, arch.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [s, b, h]
        a = self.arch
        s, b, _ = x.shape
        hn, groups, per_group = a.hidden // a.heads, a.query_groups, a.heads // a.query_groups
        mixed = self.self_attention.linear_qkv(self.input_layernorm(x)).view(s, b, groups, (per_group + 2) * hn)
        q, k, v = torch.split(mixed, [per_group * hn, hn, hn], dim=3)
        q = q.reshape(s, b, a.heads, hn)
        k, v = (t.repeat_interleave(per_group, dim=2) for t in (k, v))  # [s, b, heads, hn]
        scores = torch.einsum("sbhd,tbhd->bhst", q, k) / hn**0.5
        scores = scores.masked_fill(torch.triu(torch.ones(s, s, dtype=torch.bool), 1), float("-inf"))
        context = torch.einsum("bhst,tbhd->sbhd", scores.softmax(-1), v).reshape(s, b, a.hidden)
        x = x + self.self_attention.linear_proj(context)
        h = self.mlp.linear_fc1(self.pre_mlp_layernorm(x))
        if a.glu:
            gate, up = torch.chunk(h, 2, dim=-1)
            h = torch.nn.functional.gelu(gate) * up
        else:
            h = torch.nn.functional.gelu(h)
        return x + self.mlp.linear_fc2(h)


class PlainGPT(torch.nn.Module):
    """The same GPT in plain PyTorch, with the parameter names of a single-process Megatron GPT
    (local layer spec), for cross-framework loads."""

    def __init__(self, arch: Arch = Arch(), padded_vocab: int | None = None) -> None:
        super().__init__()
        from torch import nn

        vocab = padded_vocab or arch.padded_vocab(1)
        self.embedding = nn.Module()
        self.embedding.word_embeddings = nn.Embedding(vocab, arch.hidden)
        self.embedding.position_embeddings = nn.Embedding(SEQ, arch.hidden)
        self.decoder = nn.Module()
        self.decoder.layers = nn.ModuleList(_Layer(arch) for _ in range(arch.layers))
        self.decoder.final_layernorm = nn.LayerNorm(arch.hidden)
        self.output_layer = nn.Linear(arch.hidden, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits [b, s, vocab]."""
        positions = torch.arange(tokens.shape[1])
        x = (self.embedding.word_embeddings(tokens) + self.embedding.position_embeddings(positions)).transpose(0, 1)
        for layer in self.decoder.layers:
            x = layer(x)
        return self.output_layer(self.decoder.final_layernorm(x)).transpose(0, 1)

    def loss(self, step: int, arch: Arch = Arch()) -> torch.Tensor:
        tokens, labels = batch(step, arch)
        logits = self(tokens)
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
