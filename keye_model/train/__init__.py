"""Gradient training of the Keye-VL stages: data packing, the DeepSpeed loop, checkpoints, launch."""
