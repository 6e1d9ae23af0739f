"""Whether other processes used the cores while vitedge was timing something.

Latencies measured while another job runs are not an idle machine's, and a runtime chosen from
them may be the wrong one. Every timing step (bench, compile --runtime auto, quantize's latency
figures, optimize) watches the machine while it times and records what it saw beside its figures;
the command warns when it was busy.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from types import TracebackType

# Other processes using at least this share of all cores while timing make the machine "busy":
# on 2 cores, half a core.
BUSY_SHARE = 0.25


@dataclass(frozen=True)
class MachineLoad:
    others: float  # the share of all cores other processes (and the hypervisor's steal) used, 0..1
    load_average: float  # the 1-minute load average at the end
    cpus: int
    seconds: float  # how long it was watched

    @property
    def busy(self) -> bool:
        return self.others >= BUSY_SHARE

    def to_dict(self) -> dict[str, float | int | bool]:
        return {**asdict(self), "busy": self.busy}

    def warning(self, what: str) -> str:
        return (f"the machine was busy while {what}: other processes used {100 * self.others:.0f} % of its "
                f"{self.cpus} cores (load average {self.load_average:.1f}), so these latencies are not an idle "
                "machine's; time again when it is idle")


class LoadWatch:
    """`with LoadWatch() as watch: ...` then `watch.load`: the cores' busy time over the block
    minus this process's own CPU time (its threads included), as a share of all cores."""

    load: MachineLoad | None = None

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
        self.load = MachineLoad(round(others, 3), round(os.getloadavg()[0], 2), cpus, round(wall, 2))

    @staticmethod
    def _busy_seconds() -> float:
        import psutil

        times = psutil.cpu_times()
        total = sum(getattr(times, f) for f in times._fields if f not in ("guest", "guest_nice"))
        return total - times.idle - getattr(times, "iowait", 0.0)

    def _own_seconds(self) -> float:
        times = self._process.cpu_times()
        return times.user + times.system + times.children_user + times.children_system
