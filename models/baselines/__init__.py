"""Baselines for novel-view synthesis: per-scene methods (:class:`sparse3d.train.scene_trainer.SceneMethod`) that set the floor a real method must beat."""
