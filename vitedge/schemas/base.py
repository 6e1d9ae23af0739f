"""The frozen document class every schema derives from, and the field types they share."""

from __future__ import annotations

import json
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Count = Annotated[int, Field(ge=0)]
Positive = Annotated[int, Field(ge=1)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]


def _relative(value: str) -> str:
    parts = value.split("/")
    if not value or value.startswith("/") or "\\" in value or "\x00" in value or ".." in parts:
        raise ValueError(f"{value!r} is not a relative path inside the folder")
    return value


# A file name inside the folder (sub-folders allowed): `documents.confined` checks links too.
RelPath = Annotated[str, AfterValidator(_relative)]
# Keyword arguments that make timm / torchvision read a file or the network.
FORBIDDEN_KWARGS = frozenset({"checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                              "cache_dir", "weights", "progress", "pretrained_strict"})


class Doc(BaseModel):
    """A validated, frozen document: also how typed results cross module boundaries."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (defaults filled in, extra keys kept)."""
        return self.model_dump(mode="json", by_alias=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Validated as a document read from disk is (strict JSON mode)."""
        return cls.model_validate_json(json.dumps(data))


class LoadDoc(Doc):
    """How busy the cores were while timing (what vitedge.machine_load.LoadWatch saw), as recorded
    beside the figures and as the commands warn about it."""

    others: float  # the share of all cores other processes (and the hypervisor's steal) used, 0..1
    load_average: float  # the 1-minute load average at the end
    cpus: Positive
    seconds: float  # how long it was watched
    busy: bool

    def warning(self, what: str) -> str:
        return (f"the machine was busy while {what}: other processes used {100 * self.others:.0f} % of its "
                f"{self.cpus} cores (load average {self.load_average:.1f}), so these latencies are not an idle "
                "machine's; time again when it is idle")
