"""Cluster environments Lightning does not detect on its own.

:class:`SubmititLocalEnvironment`: the ranks of submitit's local executor
(``hydra/launcher=submitit_local``, one process per task on this machine), so that a run tried
locally with the same launcher as on SLURM trains as one DDP job; on SLURM itself Lightning's
``SLURMEnvironment`` reads the ranks. :func:`detected_environments` is what ``train`` adds to
``trainer.plugins``.
"""

from __future__ import annotations

import os
import zlib

from lightning.fabric.plugins.environments import ClusterEnvironment

_PORTS = (20_000, 40_000)  # the rendezvous port is drawn from this range by job id


class SubmititLocalEnvironment(ClusterEnvironment):
    """Ranks from submitit's ``SUBMITIT_LOCAL_*`` variables; every task is started by submitit
    (``creates_processes_externally``), the rendezvous is on this machine at a port all tasks
    derive from their shared job id (or ``MASTER_PORT``)."""

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return os.environ.get("MASTER_ADDR", "127.0.0.1")

    @property
    def main_port(self) -> int:
        if "MASTER_PORT" in os.environ:
            return int(os.environ["MASTER_PORT"])
        job = os.environ.get("SUBMITIT_LOCAL_JOB_ID", "0")
        return _PORTS[0] + zlib.crc32(job.encode()) % (_PORTS[1] - _PORTS[0])

    @staticmethod
    def detect() -> bool:
        return "SUBMITIT_LOCAL_NTASKS" in os.environ and "SUBMITIT_LOCAL_GLOBALID" in os.environ

    def world_size(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_NTASKS"])

    def set_world_size(self, size: int) -> None:
        pass  # given by submitit

    def global_rank(self) -> int:
        return int(os.environ["SUBMITIT_LOCAL_GLOBALID"])

    def set_global_rank(self, rank: int) -> None:
        pass  # given by submitit

    def local_rank(self) -> int:
        return int(os.environ.get("SUBMITIT_LOCAL_LOCALID", self.global_rank()))

    def node_rank(self) -> int:
        return int(os.environ.get("SUBMITIT_LOCAL_NODEID", 0))


def detected_environments() -> list[ClusterEnvironment]:
    """The environments of this module whose variables are set (none outside such a job)."""
    return [SubmititLocalEnvironment()] if SubmititLocalEnvironment.detect() else []
