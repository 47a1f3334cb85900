"""Image, mesh and detection metrics."""
