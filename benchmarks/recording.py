"""What the load client records for the reference server: every proxy's resources now, or for each
proxy and type that changed since a mark, the (before, after) pair. Pickled; read by
reference_server.py."""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any

from benchmarks.bodies import ABSENT

if TYPE_CHECKING:
    from benchmarks.holdings import State, Tracker


def _entry(st: State | None, version: str, used: set[bytes]) -> tuple[str, list[bytes]] | None:
    if st is None:
        return None
    digests = [d for d in st.held.values() if d != ABSENT]
    used.update(digests)
    return version, digests


def dump(tracker: Tracker, path: str, mark_id: int | None = None) -> dict[str, Any]:
    """Write what every proxy holds now (mark_id None), or for each proxy and type that changed
    since the mark, (before, after): the input of the reference server."""
    used: set[bytes] = set()
    out: dict[str, Any] = {"delta": tracker.delta}
    if mark_id is None:
        out["proxies"] = {
            node: [_entry(h[ti], tracker.versions[p][ti], used) for ti in range(4)]
            for p, (node, h) in enumerate(zip(tracker.node_ids, tracker.held, strict=True))
        }
    else:
        m = tracker.marks[mark_id]
        changes: dict[str, dict[int, Any]] = {}
        for p, node in enumerate(tracker.node_ids):
            for ti in range(4):
                before, after = m.states[p][ti], tracker.held[p][ti]
                if before is not None and after is not None and before.key != after.key:
                    changes.setdefault(node, {})[ti] = (
                        _entry(before, m.versions[p][ti], used),
                        _entry(after, tracker.versions[p][ti], used),
                    )
        out["changes"] = changes
    missing = [d for d in used if d not in tracker.bodies]
    out["bodies"] = {d: tracker.bodies[d] for d in used if d in tracker.bodies}
    with open(path, "wb") as f:
        pickle.dump(out, f, protocol=pickle.HIGHEST_PROTOCOL)
    return {"bodies": len(out["bodies"]), "missing_bodies": len(missing)}
