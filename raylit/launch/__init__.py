"""Launchers: how a Trainer call reaches the processes that run it.

``Trainer.fit`` / ``validate`` / ``test`` / ``predict`` build a ``RunSpec`` (:mod:`raylit.launch.spec`). A single
local device runs it in-process (:mod:`raylit.launch.local`); several workers, or an explicit Ray
``ScalingConfig``, go through :mod:`raylit.launch.ray`, where each worker builds its own ``Run`` from the spec.
Ray is imported only by the modules of this package that talk to it (and by :mod:`raylit.tune`), never by
``import raylit``.
"""
