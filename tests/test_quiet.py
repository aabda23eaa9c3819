"""raylit.launch.quiet: Ray Train's "Failed to send resource request" warning (a GetTimeoutError traceback that a
busy machine provokes in a healthy run) is dropped, and nothing else is.

No Ray instance is started: Ray Train's own client code runs with ``ray.get`` replaced by one that times out,
after the logging set-up that Ray Train's controller makes (``dictConfig`` of ``ray.train`` at DEBUG, which resets
the level of every ``ray.train.*`` logger, so only a filter survives it)."""

from __future__ import annotations

import io
import logging
import logging.config

import pytest

from raylit.launch.quiet import COORDINATOR_CLIENT_LOGGER, quiet_autoscaling_request_timeouts


@pytest.fixture
def controller_logging():
    """The shape of Ray Train's controller logging (ray/train/v2/_internal/logging/logging.py): ``ray.train`` at
    DEBUG, its own console handler, no propagation. Returns the console stream; restores the loggers after."""
    train = logging.getLogger("ray.train")
    client = logging.getLogger(COORDINATOR_CLIENT_LOGGER)
    saved = (train.level, list(train.handlers), train.propagate, client.level, list(client.filters))
    stream = io.StringIO()
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"console": {"class": "logging.StreamHandler", "stream": stream}},
        "loggers": {"ray.train": {"level": "DEBUG", "handlers": ["console"], "propagate": False}},
    })
    yield stream
    train.setLevel(saved[0])
    train.handlers[:] = saved[1]
    train.propagate = saved[2]
    client.setLevel(saved[3])
    client.filters[:] = saved[4]


def _filters():
    return [f for f in logging.getLogger(COORDINATOR_CLIENT_LOGGER).filters
            if type(f).__name__ == "_AutoscalingRequestTimeoutFilter"]


def test_filter_survives_the_controllers_logging_setup_and_drops_only_timeouts(controller_logging):
    client = logging.getLogger(COORDINATOR_CLIENT_LOGGER)
    client.filters[:] = [f for f in client.filters if f not in _filters()]
    # installed first (as the worker_process_setup_hook does), then the controller configures logging
    quiet_autoscaling_request_timeouts()
    quiet_autoscaling_request_timeouts()  # idempotent
    assert len(_filters()) == 1
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"console": {"class": "logging.StreamHandler", "stream": controller_logging}},
        "loggers": {"ray.train": {"level": "DEBUG", "handlers": ["console"], "propagate": False}},
    })
    assert client.level == logging.NOTSET and len(_filters()) == 1  # level reset, filter kept

    class GetTimeoutError(TimeoutError):  # the shape of ray.exceptions.GetTimeoutError
        pass

    def log(message, exc):
        try:
            raise exc
        except Exception:
            client.warning(message, exc_info=True)

    log("Failed to send resource request for train-abc. If this error persists, file a GitHub issue.",
        GetTimeoutError("Get timed out: some object(s) not ready."))
    log("Failed to cancel resource request for train-abc.", GetTimeoutError("timed out"))
    assert controller_logging.getvalue() == ""
    log("Failed to send resource request for train-abc.", RuntimeError("the coordinator actor died"))
    client.warning("Requesting resources: something else")
    out = controller_logging.getvalue()
    assert "the coordinator actor died" in out and "Requesting resources" in out


def test_ray_trains_own_client_is_quiet_on_a_timeout(controller_logging, monkeypatch):
    """The real ``TrainAutoscalingCoordinatorClient.send_resource_request`` of the installed Ray, with a
    coordinator that never answers in time."""
    pytest.importorskip("ray.train.v2")
    import ray.exceptions
    from ray.train import ScalingConfig
    from ray.train.v2._internal.execution.scaling_policy import autoscaling_coordinator_client as acc

    class NeverReady:
        class request_resources:  # noqa: N801 (mimics an actor method)
            @staticmethod
            def remote(**kwargs):
                return object()

    def get(ref, timeout=None):
        raise ray.exceptions.GetTimeoutError(f"Get timed out: object not ready after {timeout}s")

    monkeypatch.setattr(acc.ray, "get", get)
    assert acc.logger.name == COORDINATOR_CLIENT_LOGGER  # the logger the filter is installed on
    client = acc.TrainAutoscalingCoordinatorClient("train-test")
    client.__dict__["_autoscaling_coordinator"] = NeverReady()  # cached_property: no actor is created

    logging.getLogger(COORDINATOR_CLIENT_LOGGER).filters[:] = []
    client.send_resource_request(ScalingConfig(num_workers=2), num_workers=2)
    unfiltered = controller_logging.getvalue()
    assert "Failed to send resource request for train-test" in unfiltered and "GetTimeoutError" in unfiltered

    controller_logging.truncate(0)
    controller_logging.seek(0)
    quiet_autoscaling_request_timeouts()
    client.send_resource_request(ScalingConfig(num_workers=2), num_workers=2)
    assert controller_logging.getvalue() == ""
