"""Training: typed config, losses, events and the loop (single process, or DDP under torchrun)."""
