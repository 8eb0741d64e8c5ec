"""The decision layer: deploy context + target + model summary -> plan, and the selection rules. No heavy imports."""
