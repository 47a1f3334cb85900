"""The SpaRe benchmark protocol (AIM 2024 Sparse Neural Rendering Challenge, Nazarczuk et al., ECCV Workshops 2024).

Modules, by job: :mod:`~sparse3d.spare.submission` (render scenes and write the submission zip),
:mod:`~sparse3d.spare.check` (list a submission's problems), :mod:`~sparse3d.spare.evaluation` (score rendered
views against ground truth), :mod:`~sparse3d.spare.report` (JSON, CSV and markdown writers of a score),
:mod:`~sparse3d.spare.sweep` (one job of a per-scene sweep: render, score, ``results.json``) and
:mod:`~sparse3d.spare.results` (gather a sweep's ``results.json`` files into one table).
"""
