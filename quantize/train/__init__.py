"""Heterogeneous SSM training: AU and expression batches in one step, DDP-ready, exactly resumable."""
