"""Training: configuration, the loop (single process or DDP), strategies, checkpoints."""
