"""Measurement: latency on the runtime, accuracy, per-layer tables, the roofline estimate."""
