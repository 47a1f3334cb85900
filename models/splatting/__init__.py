"""Gaussian splatting: the shared Gaussian parameterisation and the per-scene methods built on it (plain 3DGS;
the sparse-view methods join here), all fitted by :class:`sparse3d.train.scene_trainer.SceneTrainer`."""
