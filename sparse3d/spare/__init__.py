"""The SpaRe benchmark protocol: submission writing and checking, scene sweeps and result tables."""
