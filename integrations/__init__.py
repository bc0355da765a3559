"""Framework glue: torch DDP/FSDP1/FSDP2 adapters, Megatron-Core and Flower integrations."""
