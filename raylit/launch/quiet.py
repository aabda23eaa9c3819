"""Keep a harmless Ray Train warning (with a 20-line traceback) out of a healthy run's console.

Where it comes from (Ray 2.60, Train V2): every run's ``TrainController`` actor registers its workers' resources
with Ray Data's ``AutoscalingCoordinator`` actor, whatever the cluster (also a local one without an autoscaler):
``ScalingPolicy.after_controller_start`` -> ``TrainAutoscalingCoordinatorClient.send_resource_request``
(``ray/train/v2/_internal/execution/scaling_policy/autoscaling_coordinator_client.py``), and again every 20 s
while the group starts or runs (``maybe_send_resource_request``). The first call creates that detached actor (a
new Python process) and waits for the reply with ``ray.get(..., timeout=5)`` (``AUTOSCALING_REQUESTS_GET_TIMEOUT_S``,
a module constant). On a busy machine the process takes longer than 5 s to start, the ``GetTimeoutError`` is
caught, and the client logs ``Failed to send resource request for train-<run id>. If this only happens
transiently during network partition or CPU being overloaded, it's safe to ignore this error. If this error
persists, file a GitHub issue.`` at WARNING with ``exc_info=True``. Training is unaffected: the request is
advisory (nothing acts on it without an autoscaler, and it is re-sent 20 s later on one that has one).

No setting or environment variable turns the request off or lengthens the timeout in Ray 2.60, and raising the
level of the logger does not last: the controller configures logging with ``logging.config.dictConfig`` for
``ray.train`` at DEBUG, which resets every existing ``ray.train.*`` child logger to NOTSET. A filter on the
logger object does survive that (dictConfig leaves filters alone), so the fix is a filter that drops exactly
these records: from that logger, "Failed to send/cancel resource request", caused by a timeout. Any other
failure of the request (the coordinator actor died, an unexpected error) still shows.

The filter has to be installed in the process that runs the controller, i.e. in Ray's
``worker_process_setup_hook`` (raylit's ``raylit.launch.session.quiet_ray_workers``), and in the driver for the case
where Ray Train runs the controller in the calling process. This module imports neither Ray nor anything heavy.
"""

from __future__ import annotations

import logging

COORDINATOR_CLIENT_LOGGER = "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client"
_MESSAGES = ("Failed to send resource request", "Failed to cancel resource request")


class _AutoscalingRequestTimeoutFilter(logging.Filter):
    """Drops the coordinator client's warning when (and only when) the request timed out."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(_MESSAGES):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        # ray.exceptions.GetTimeoutError subclasses TimeoutError; checking the builtin keeps Ray unimported here
        return not isinstance(exc, TimeoutError)


def quiet_autoscaling_request_timeouts() -> None:
    """Install the filter on Ray Train's autoscaling-coordinator client logger in this process (idempotent).

    Call it in every Ray worker process (from the ``worker_process_setup_hook``) and in the driver before a
    ``TorchTrainer`` runs."""
    logger = logging.getLogger(COORDINATOR_CLIENT_LOGGER)
    if not any(isinstance(f, _AutoscalingRequestTimeoutFilter) for f in logger.filters):
        logger.addFilter(_AutoscalingRequestTimeoutFilter())
