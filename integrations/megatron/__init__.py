"""Megatron-Core glue: ``framework="megatron"`` (adapter), CPU shims for tests, and the key map
that moves checkpoints between Megatron and plain PyTorch models (names)."""
