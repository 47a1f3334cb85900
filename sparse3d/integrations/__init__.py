"""Bridges to other tools' plugin systems; each module imports its tool lazily, so importing one never fails
when the tool is not installed (:mod:`sparse3d.integrations.nerfstudio`: ``ns-train`` methods)."""
