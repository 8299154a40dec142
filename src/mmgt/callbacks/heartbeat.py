"""``RankHeartbeat``: name the DDP rank that stopped answering when a collective times out.

A timed-out collective only says that *this* rank waited too long (gloo: ``Timed out waiting ... for recv``); with
many ranks the user cannot tell which one hung. Each rank bumps a counter in the process group's own key-value
store (the TCPStore every rank already talks to, so it works across nodes without a shared filesystem) from a
daemon thread; after a timeout, the counters that stopped moving are the hung ranks.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

KEY = "mmgt/heartbeat/{}"


class RankHeartbeat(L.Callback):
    """Per-rank liveness counters in the process group's store (inactive in a single process)."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = float(interval_s)
        self.world = self.rank = 0
        self._store: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._store is not None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        import torch.distributed as dist

        if trainer.world_size < 2 or not (dist.is_available() and dist.is_initialized()) or self.active:
            return
        from torch.distributed import distributed_c10d

        self._store = distributed_c10d._get_default_store()
        self.world, self.rank = trainer.world_size, trainer.global_rank
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="mmgt-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._store.add(KEY.format(self.rank), 1)
            except Exception:  # noqa: BLE001 - the store is gone (shutdown): stop beating
                return

    def _counters(self) -> dict[int, int]:
        return {r: int(self._store.add(KEY.format(r), 0)) for r in range(self.world)}

    def hung_ranks(self, wait_s: float | None = None) -> list[int] | None:
        """Ranks (other than this one) whose counter did not move over ``wait_s`` (default 3 beats); None when
        the store itself does not answer (it lives in rank 0's process: rank 0 is then the one that hung)."""
        if not self.active:
            return []
        result: dict[str, Any] = {}

        def probe() -> None:
            try:
                first = self._counters()
                time.sleep(3 * self.interval_s if wait_s is None else wait_s)
                result["moved"] = {r: c != first[r] for r, c in self._counters().items()}
            except Exception as err:  # noqa: BLE001
                result["error"] = err

        t = threading.Thread(target=probe, daemon=True)
        t.start()
        t.join((3 * self.interval_s if wait_s is None else wait_s) + 10.0)
        if "moved" not in result:
            return None
        return [r for r, moved in result["moved"].items() if not moved and r != self.rank]

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop.set()

    def explain(self, err: BaseException) -> RuntimeError | None:
        """A clear error naming the hung rank(s) for a collective timeout, else None."""
        if not self.active or "timed out" not in str(err).lower():
            return None
        hung = self.hung_ranks()
        who = ("rank 0 (it hosts the process group's store, which no longer answers)" if hung is None else
               f"rank(s) {', '.join(map(str, hung))}" if hung else "no other rank (all still beating: a slow step?)")
        return RuntimeError(f"rank {self.rank}: a DDP collective timed out (trainer.strategy.timeout); stopped "
                            f"responding: {who}. Check that process (stuck I/O, deadlock, killed by the OOM killer)")
