"""The paper's image protocol (``python -m eval.paper``): identities x expressions rendered with and without the
reference adapter, scored by ID similarity, 3D Exp-MSE and (with local Inception weights) FID."""
