"""Megatron-Core glue: ``framework="megatron"`` (adapter: model, optimizer_state, layout,
data_parallel), the key map between Megatron checkpoints and plain PyTorch / FSDP2 models (names),
and CPU shims for tests and benchmarks (cpu_shims). See docs/megatron.md."""
