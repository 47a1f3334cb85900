"""SparseFlex (He et al., arXiv 2503.21732): sparse FlexiCubes surfaces.

* :mod:`~sparse3d.models.sparseflex.structure` -- sparse voxel grids with corner signed distances, built from
  meshes, point clouds and SDF volumes (coarse-to-fine narrow bands), saved as ``.npz``;
* :mod:`~sparse3d.models.sparseflex.meshing` -- the core of ``sparse3d-mesh`` (any input to a mesh);
* :mod:`~sparse3d.models.sparseflex.fit` -- fitting a surface from renders (``experiment=sparseflex_fit``);
* :mod:`~sparse3d.models.sparseflex.field_io` -- the fitted ``field.npz`` files.

Submodules are imported on use (the viewer reads field files without loading the Warp kernels).
"""
