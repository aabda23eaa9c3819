"""Launchers: how a Trainer call reaches the processes that run it.

A single local device runs in-process (``Trainer._run``); several workers, or an explicit Ray
``ScalingConfig``, go through :mod:`raylit.launch.ray`. That module imports Ray lazily, inside functions, so
``import raylit`` never pays for (or requires) Ray.
"""
