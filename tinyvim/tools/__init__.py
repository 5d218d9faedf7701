"""Tools written once against the runner interface, for any backend: output comparison, input
batches, the PyTorch reference, validation, per-block attribution, profiling, the GPU check."""
