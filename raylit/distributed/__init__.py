"""Several processes training together over torch.distributed (no Ray here: the launcher creates the processes).

- ``runtime.py``: ``DistributedRuntime`` (collectives, DDP wrapping with forward redirection, ``no_sync``);
- ``samplers.py``: which samples each rank reads (distributed samplers, DataLoader rebuilding);
- ``sync_bn.py``: ``sync_batchnorm``, including a CPU (gloo) implementation;
- ``fsdp.py``: ``FSDPRuntime`` for ``strategy="fsdp"`` (imported only when used).
"""

from raylit.distributed.runtime import DistributedRuntime
from raylit.distributed.samplers import _equal_batch_counts, _ShardedSampler  # noqa: F401  (tests import them here)

__all__ = ["DistributedRuntime"]
