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
