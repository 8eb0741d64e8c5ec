"""Weight sparsity: global magnitude and 2:4 masks (unstructured), iterative magnitude pruning with rewinding
(lottery), masks at initialisation trained from scratch (prune_at_init) and supermasks (supermask)."""
