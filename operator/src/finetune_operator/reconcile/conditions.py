"""Conditions as a list keyed by type, the way metav1.Condition lists work."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def rfc3339(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Conditions:
    """A mutable view of ``status.conditions`` that keeps lastTransitionTime honest."""

    items: list[dict[str, Any]] = field(default_factory=list)
    generation: int | None = None

    @classmethod
    def from_status(cls, status: dict | None, generation: int | None) -> Conditions:
        return cls([dict(c) for c in (status or {}).get("conditions", [])], generation)

    def get(self, type_: str) -> dict | None:
        return next((c for c in self.items if c.get("type") == type_), None)

    def is_true(self, type_: str) -> bool:
        c = self.get(type_)
        return bool(c and c.get("status") == "True")

    def reason(self, type_: str) -> str | None:
        c = self.get(type_)
        return c.get("reason") if c else None

    def set(self, type_: str, status: bool | str, reason: str, message: str = "") -> bool:
        """Set a condition; lastTransitionTime moves only when the status changes. → whether it changed."""
        value = status if isinstance(status, str) else ("True" if status else "False")
        current = self.get(type_)
        entry = {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message[:32768],
            "observedGeneration": self.generation,
        }
        if current is None:
            entry["lastTransitionTime"] = rfc3339(now())
            self.items.append(entry)
            return True
        entry["lastTransitionTime"] = current.get("lastTransitionTime") if current.get("status") == value else rfc3339(now())
        changed = any(current.get(k) != entry[k] for k in ("status", "reason", "message"))
        current.clear()
        current.update({k: v for k, v in entry.items() if v is not None})
        return changed

    def remove(self, type_: str) -> None:
        self.items = [c for c in self.items if c.get("type") != type_]

    def as_list(self) -> list[dict[str, Any]]:
        return [{k: v for k, v in c.items() if v is not None} for c in self.items]
