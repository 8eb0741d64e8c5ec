"""Pruning: the criteria that rank channels (importance, recon_scores, sensitivity), the allocation of widths
over a latency table (allocate), the surgery that removes them (prune over graph_surgery), layer-level depth
pruning (depth) and network slimming (slimming)."""
