"""Lightning's module paths that users import from, under ``raylit``: each name exists in Lightning 2.6 at that
path, and ``raylit.<same path>`` gives raylit's object for it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import raylit

# (path under the package, name, raylit's object as "module:attribute")
PATHS = [
    ("core", "LightningModule", "raylit.module:LightningModule"),
    ("core", "LightningDataModule", "raylit.datamodule:LightningDataModule"),
    ("core.module", "LightningModule", "raylit.module:LightningModule"),
    ("core.datamodule", "LightningDataModule", "raylit.datamodule:LightningDataModule"),
    ("core.hooks", "DataHooks", "raylit.module:DataHooks"),
    ("core.optimizer", "LightningOptimizer", "raylit.optim:LightningOptimizer"),
    ("core.saving", "load_hparams_from_yaml", "raylit.saving:load_hparams_from_yaml"),
    ("core.saving", "save_hparams_to_yaml", "raylit.saving:save_hparams_to_yaml"),
    ("core.mixins", "HyperparametersMixin", "raylit.hparams:HyperparametersMixin"),
    ("core.mixins.hparams_mixin", "HyperparametersMixin", "raylit.hparams:HyperparametersMixin"),
    ("profilers", "Profiler", "raylit.profilers.profiler:Profiler"),
    ("profilers", "PassThroughProfiler", "raylit.profilers.base:PassThroughProfiler"),
    ("profilers", "SimpleProfiler", "raylit.profilers.simple:SimpleProfiler"),
    ("profilers", "AdvancedProfiler", "raylit.profilers.advanced:AdvancedProfiler"),
    ("profilers", "PyTorchProfiler", "raylit.profilers.pytorch:PyTorchProfiler"),
    ("profilers.profiler", "Profiler", "raylit.profilers.profiler:Profiler"),
    ("profilers.base", "PassThroughProfiler", "raylit.profilers.base:PassThroughProfiler"),
    ("profilers.simple", "SimpleProfiler", "raylit.profilers.simple:SimpleProfiler"),
    ("profilers.advanced", "AdvancedProfiler", "raylit.profilers.advanced:AdvancedProfiler"),
    ("profilers.pytorch", "PyTorchProfiler", "raylit.profilers.pytorch:PyTorchProfiler"),
    ("tuner", "Tuner", "raylit.tuner.tuning:Tuner"),
    ("tuner.tuning", "Tuner", "raylit.tuner.tuning:Tuner"),
    ("tuner.lr_finder", "_LRFinder", "raylit.tuner.lr_finder:_LRFinder"),
    ("callbacks", "LearningRateFinder", "raylit.callbacks.lr_finder:LearningRateFinder"),
    ("callbacks", "BatchSizeFinder", "raylit.callbacks.batch_size_finder:BatchSizeFinder"),
    ("callbacks.lr_finder", "LearningRateFinder", "raylit.callbacks.lr_finder:LearningRateFinder"),
    ("callbacks.batch_size_finder", "BatchSizeFinder", "raylit.callbacks.batch_size_finder:BatchSizeFinder"),
]


def _resolve(spec: str):
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


@pytest.mark.parametrize("path,name,target", PATHS, ids=[f"{p}.{n}" for p, n, _ in PATHS])
def test_lightning_path_resolves_to_raylit_object(path, name, target):
    assert hasattr(importlib.import_module(f"pytorch_lightning.{path}"), name)  # the path is Lightning's
    assert getattr(importlib.import_module(f"raylit.{path}"), name) is _resolve(target)


def test_subpackages_are_attributes_as_in_lightning():
    for name in ("core", "loops", "profilers", "tuner"):
        assert importlib.import_module(f"raylit.{name}") is getattr(raylit, name)
    assert raylit.core.module.LightningModule is raylit.LightningModule
    assert raylit.loops.Loop.__name__ == "Loop"
    with pytest.raises(AttributeError):
        raylit.not_a_module  # noqa: B018


def test_import_raylit_stays_light():
    code = ("import sys, raylit; heavy = [m for m in ('ray', 'pytorch_lightning', 'lightning', 'raylit.tuner', "
            "'raylit.core', 'matplotlib') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
