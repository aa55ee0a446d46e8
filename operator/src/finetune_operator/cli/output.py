"""Printing what the commands read: kubectl-style tables (``table``, ``wide``), JSON and YAML, ages,
sizes and the loss sparkline.

A list is printed from ``Column``s: each has a header, a function of the object and whether it shows only
with ``-o wide``. JSON and YAML print the objects as the API returned them (a list as a ``List``, as
``kubectl get -o json`` does), so they can be piped to ``jq`` or applied again.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[dict[str, Any]], Any]
    wide: bool = False


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-" if value is None else ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Left-aligned columns separated by three spaces, as kubectl prints them."""
    text_rows = [[str(h) for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in text_rows) for i in range(len(headers))]
    return "\n".join("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in text_rows)


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, default=str)
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True).rstrip()


def print_objects(objects: list[dict[str, Any]], columns: Sequence[Column], fmt: str, all_namespaces: bool = False, empty: str = "") -> None:
    """A list of objects in the chosen format; ``empty`` is said (on stderr) when there are none, as kubectl does."""
    import sys

    if fmt in ("json", "yaml"):
        print(dump({"apiVersion": "v1", "kind": "List", "items": objects, "metadata": {}}, fmt))
        return
    if not objects:
        print(empty or "No resources found.", file=sys.stderr)
        return
    chosen = [c for c in columns if fmt == "wide" or not c.wide]
    headers = (["NAMESPACE"] if all_namespaces else []) + [c.header for c in chosen]
    rows = [([o["metadata"].get("namespace")] if all_namespaces else []) + [c.value(o) for c in chosen] for o in objects]
    print(table(rows, headers))


def print_fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """``Name:   value`` lines, as ``kubectl describe`` prints them."""
    pairs = [(k, v) for k, v in pairs if v is not None and v != ""]
    width = max((len(k) for k, _ in pairs), default=0) + 1
    for key, value in pairs:
        print(f"{key + ':':<{width}}  {value}")


def parse_time(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def duration(seconds: float | None) -> str:
    """``45s``, ``12m``, ``3h``, ``2d`` (kubectl's age), or ``-``."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def age(obj: dict[str, Any], now: dt.datetime | None = None) -> str:
    created = parse_time(obj.get("metadata", {}).get("creationTimestamp"))
    if created is None:
        return "-"
    return duration(((now or dt.datetime.now(dt.UTC)) - created).total_seconds())


def size(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """The values as a line of block characters, the last ``width`` buckets (each the mean of its values).

    >>> sparkline([4, 3, 2, 1, 1])
    '█▆▃▁▁'
    """
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return ""
    if len(values) > width:
        per = len(values) / width
        values = [sum(chunk) / len(chunk) for chunk in (values[int(i * per) : max(int(i * per) + 1, int((i + 1) * per))] for i in range(width))]
    low, high = min(values), max(values)
    span = high - low
    return "".join(SPARKS[0 if span == 0 else min(len(SPARKS) - 1, int((v - low) / span * (len(SPARKS) - 1) + 0.5))] for v in values)
