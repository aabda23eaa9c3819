"""Shared pytest fixtures. Keep this small; it must not start Ray."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # lets test modules import their _helpers modules


@pytest.fixture(scope="session")
def lightning_reference() -> dict:
    """Session cache of results computed under real Lightning, keyed by test program and configuration, so
    that the raylit half of a differential test does not rerun the reference."""
    return {}


pytest_plugins = ["_ray_fixtures"]


@pytest.fixture(params=("pytorch_lightning", "raylit"))
def pl(request):
    """The framework module of a differential test (Lightning, then raylit): the same user code written against
    ``pl.LightningModule``, ``pl.Trainer`` ... runs under both."""
    import _parity_helpers as H

    mod = H.import_framework(request.param)
    H.quiet_logging()
    return mod
