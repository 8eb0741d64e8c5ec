"""edgeopt's benchmark suite: edgeopt against what users would pick instead, measured side by side.
Run `python -m benchmarks --quick` (a few minutes) or `python -m benchmarks` (full)."""
