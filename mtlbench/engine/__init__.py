"""What runs the contracts: the trainer and its building blocks, one run end to end,
checkpoints, data parallelism and the speed options."""
