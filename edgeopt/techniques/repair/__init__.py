"""Repair after pruning without retraining: least-squares reconstruction of the layers fed by removed channels
(reconstruct, over the per-layer input rows of layer_rows) and BatchNorm re-estimation (bn_recal)."""
