"""The processing pipeline: per-frame processor, the daemon loop, sinks and running statistics."""
