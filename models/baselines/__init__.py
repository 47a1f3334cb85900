"""Reference novel-view baselines that implement :class:`sparse3d.render.NovelViewMethod`."""
