"""Whether other processes used the cores while vitedge was timing something.

Latencies measured while another job runs are not an idle machine's, and a runtime chosen from
them may be the wrong one. Every timing step (bench, compile --runtime auto, quantize's latency
figures, optimize) watches the machine while it times and records what it saw beside its figures;
the command warns when it was busy.
"""

from __future__ import annotations

import os
import time
from types import TracebackType

from vitedge.schemas.base import LoadDoc

# Other processes using at least this share of all cores while timing make the machine "busy":
# on 2 cores, half a core.
BUSY_SHARE = 0.25


class LoadWatch:
    """`with LoadWatch() as watch: ...` then `watch.load`: the cores' busy time over the block
    minus this process's own CPU time (its threads included), as a share of all cores."""

    load: LoadDoc | None = None  # what it saw: the document the figures record it in

    def __enter__(self) -> LoadWatch:
        import psutil

        self._process = psutil.Process()
        self._started = time.perf_counter()
        self._busy, self._own = self._busy_seconds(), self._own_seconds()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        wall = time.perf_counter() - self._started
        busy, own = self._busy_seconds() - self._busy, self._own_seconds() - self._own
        cpus = os.cpu_count() or 1
        others = max(0.0, min(1.0, (busy - own) / (wall * cpus))) if wall > 0 else 0.0
        self.load = LoadDoc(others=round(others, 3), load_average=round(os.getloadavg()[0], 2), cpus=cpus,
                            seconds=round(wall, 2), busy=others >= BUSY_SHARE)

    @staticmethod
    def _busy_seconds() -> float:
        import psutil

        times = psutil.cpu_times()
        total = sum(getattr(times, f) for f in times._fields if f not in ("guest", "guest_nice"))
        return total - times.idle - getattr(times, "iowait", 0.0)

    def _own_seconds(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system + times.children_user + times.children_system
