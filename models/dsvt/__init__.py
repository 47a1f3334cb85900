"""DSVT (Dynamic Sparse Voxel Transformer with rotated sets): the dynamic VFE, the input layer and the backbone."""
