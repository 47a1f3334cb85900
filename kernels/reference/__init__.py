"""Plain-PyTorch oracles of every Warp kernel: the spec the kernels are tested against."""
