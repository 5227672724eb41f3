"""What every simulated proxy holds, shared: the load client's bookkeeping, without any gRPC.

A proxy's holding of one xDS type is a `State` (resource name -> content digest). States are
interned: proxies served the same resources share one State object, found by a digest of the
response's serialized resources, so a response identical to one already seen costs a hash and a
dict lookup instead of decoding thousands of resources. Each distinct resource body is decoded
once (its name, what it references) and, while recording, kept for the reference server.

Every response is appended to a columnar log (time, proxy, type, resources, bytes, changed);
`Tracker.stats` answers "since mark M, which proxies needed a change and when did they get it".
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from benchmarks import recording, wire
from benchmarks.bodies import ABSENT, BodyInfo, decode_body
from benchmarks.wire import T_CDS, T_EDS, T_LDS, T_RDS, TYPE_INDEX


class State:
    """One type's resources as held by one or more proxies (never mutated once built)."""

    __slots__ = ("_cover", "held", "key", "wants")

    def __init__(self, key: bytes, held: dict[str, bytes], wants: frozenset[str] | None) -> None:
        self.key = key
        self.held = held
        self.wants = wants
        self._cover: dict[frozenset[str], bool] = {}

    def covers(self, names: frozenset[str]) -> bool:
        ok = self._cover.get(names)
        if ok is None:
            ok = self._cover[names] = self.held.keys() >= names
        return ok


@dataclass
class Mark:
    t: float
    idx: int
    states: list[tuple[State | None, ...]]
    versions: list[tuple[str, ...]]


class Tracker:
    def __init__(self, *, node_ids: list[str], delta: bool, record: bool) -> None:
        n = len(node_ids)
        self.node_ids = node_ids
        self.delta = delta
        self.record = record
        self.held: list[list[State | None]] = [[None] * 4 for _ in range(n)]
        self.versions: list[list[str]] = [[""] * 4 for _ in range(n)]
        self.nonces: list[list[str]] = [[""] * 4 for _ in range(n)]
        self.converged_at = array("d", bytes(8 * n))
        self.states: dict[bytes, State] = {}
        self.infos: dict[bytes, BodyInfo] = {}
        self.bodies: dict[bytes, tuple[int, str, str, bytes]] = {}  # digest -> (type, name, version, body)
        self.transitions: dict[tuple[bytes, bytes], tuple[State, bool, bool]] = {}
        self._refs: dict[str, str] = {}
        self.marks: dict[int, Mark] = {}
        self._mark_ids = 0
        # the response log, one column per field
        self.log_t = array("d")
        self.log_p = array("i")
        self.log_type = array("b")
        self.log_n = array("i")
        self.log_bytes = array("q")
        self.log_changed = array("b")
        self.log_state: list[State] = []  # the proxy's state of that type after the response
        self.log_version: list[str] = []
        self.log_nonce: list[str] = []
        self.stream_errors: list[str] = []
        self.reconnects = 0
        self.gave_up = 0

    # -- responses -------------------------------------------------------------------------------

    def _info(self, ti: int, body: bytes, d: bytes, version: str) -> BodyInfo:
        info = self.infos.get(d)
        if info is None:
            info = decode_body(ti, body)
            refs = self._refs.setdefault(info.refs, info.refs)  # route vhost lists repeat: share them
            info = self.infos[d] = BodyInfo(info.name, refs, info.wants)
        if self.record and d not in self.bodies:
            self.bodies[d] = (ti, info.name, version, body)
        return info

    def _wants(self, ti: int, held: dict[str, bytes]) -> frozenset[str] | None:
        if ti not in (T_CDS, T_LDS):
            return None
        return frozenset(w for d in held.values() for w in self.infos[d].wants)

    def on_sotw(self, p: int, raw: bytes, t: float) -> tuple[int, Any, State, bool]:
        """Take one DiscoveryResponse; returns (type index, message, new state, EDS clusters changed).

        CDS and LDS responses carry the complete set (it replaces what the proxy held); EDS and
        RDS responses may carry only some of the subscribed resources (merged into what it held)."""
        msg = discovery_pb2.DiscoveryResponse.FromString(raw)
        ti = TYPE_INDEX[msg.type_url]
        span = wire.sotw_resources_slice(raw, msg)
        rkey = wire.digest(raw[span[0] : span[1]]) if span else None
        old = self.held[p][ti]
        if ti in (T_EDS, T_RDS):
            entries = ((None, "", a.value) for a in msg.resources)
            st, changed, eds_changed = self._merge(ti, old, entries, (), rkey)
        else:
            st = self.states.get(rkey) if rkey is not None else None
            if st is None:
                held = {}
                for a in msg.resources:
                    body = a.value
                    d = wire.digest(body)
                    held[self._info(ti, body, d, "").name] = d
                key = rkey if rkey is not None else wire.digest(b"".join(held.values()))
                st = self.states.setdefault(key, State(key, held, self._wants(ti, held)))
            changed = old is None or old.key != st.key
            eds_changed = False
            if changed and ti == T_CDS:
                tkey = (old.key if old is not None else b"", st.key)
                hit = self.transitions.get(tkey)
                if hit is None:
                    before = old.held if old is not None else {}
                    flag = any(before.get(n) != d and self.infos[d].wants for n, d in st.held.items())
                    hit = self.transitions[tkey] = (st, True, flag)
                eds_changed = hit[2]
        self._log(p, ti, t, msg.version_info, msg.nonce, len(msg.resources), len(raw), changed, st)
        self.held[p][ti] = st
        return ti, msg, st, eds_changed

    def on_delta(self, p: int, raw: bytes, t: float) -> tuple[int, Any, State, bool]:
        """Take one DeltaDiscoveryResponse; same return as on_sotw."""
        msg = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
        ti = TYPE_INDEX[msg.type_url]
        span = wire.delta_resources_slice(raw, msg)
        rkey = None
        if span is not None:
            rkey = wire.digest(raw[span[0] : span[1]] + wire.repeated(6, msg.removed_resources))
        entries = ((r.name, r.version, r.resource.value) for r in msg.resources)
        st, changed, eds_changed = self._merge(ti, self.held[p][ti], entries, msg.removed_resources, rkey)
        self._log(p, ti, t, msg.system_version_info, msg.nonce, len(msg.resources), len(raw), changed, st)
        self.held[p][ti] = st
        return ti, msg, st, eds_changed

    def _merge(
        self,
        ti: int,
        old: State | None,
        entries: Iterable[tuple[str | None, str, bytes]],
        removed: Iterable[str],
        rkey: bytes | None,
    ) -> tuple[State, bool, bool]:
        """Apply an incremental response to a state: (new state, anything changed, EDS cluster changed).
        Cached per (old state, response), so proxies taking the same step share the work."""
        old_key = old.key if old is not None else b""
        hit = self.transitions.get((old_key, rkey)) if rkey is not None else None
        if hit is not None:
            return hit
        held = dict(old.held) if old is not None else {}
        changed = eds_changed = False
        parts = []
        for name, version, body in entries:
            d = wire.digest(body)
            info = self._info(ti, body, d, version)
            parts.append(d)
            key = name or info.name
            if held.get(key) != d:
                changed = True
                held[key] = d
                eds_changed = eds_changed or bool(info.wants)
        removed = list(removed)
        wildcard = ti in (T_CDS, T_LDS)
        for name in removed:
            if held.get(name, ABSENT) != ABSENT:
                changed = True
            if wildcard:
                held.pop(name, None)
            else:
                held[name] = ABSENT
        if rkey is None:
            rkey = wire.digest(b"".join(parts) + wire.repeated(6, removed))
        key = wire.digest(old_key + rkey)
        st = self.states.setdefault(key, State(key, held, self._wants(ti, held)))
        hit = self.transitions[(old_key, rkey)] = (st, changed, eds_changed)
        return hit

    def unsubscribe(self, p: int, ti: int, names: Iterable[str]) -> None:
        """Forget resources the proxy no longer subscribes to (Envoy drops them)."""
        old = self.held[p][ti]
        if old is None:
            return
        gone = sorted(set(names) & old.held.keys())
        if gone:
            held = {n: d for n, d in old.held.items() if n not in gone}
            key = wire.digest(old.key + b"unsubscribe" + wire.repeated(4, gone))
            self.held[p][ti] = self.states.setdefault(key, State(key, held, self._wants(ti, held)))

    def _log(
        self, p: int, ti: int, t: float, version: str, nonce: str, n: int, size: int, changed: bool, st: State
    ) -> None:
        self.versions[p][ti] = version
        self.nonces[p][ti] = nonce
        self.log_t.append(t)
        self.log_p.append(p)
        self.log_type.append(ti)
        self.log_n.append(n)
        self.log_bytes.append(size)
        self.log_changed.append(1 if changed else 0)
        self.log_version.append(version)
        self.log_nonce.append(nonce)
        self.log_state.append(st)

    def check_converged(self, p: int, t: float) -> None:
        """Cold convergence: CDS and LDS held, EDS for every EDS cluster, RDS for every listener."""
        if self.converged_at[p]:
            return
        cds, eds, lds, rds = self.held[p]
        if cds is None or lds is None or cds.wants is None or lds.wants is None:
            return
        if cds.wants and (eds is None or not eds.covers(cds.wants)):
            return
        if lds.wants and (rds is None or not rds.covers(lds.wants)):
            return
        self.converged_at[p] = t

    # -- queries ---------------------------------------------------------------------------------

    def mark(self, t: float) -> tuple[int, float]:
        self._mark_ids += 1
        self.marks[self._mark_ids] = Mark(
            t, len(self.log_t), [tuple(h) for h in self.held], [tuple(v) for v in self.versions]
        )
        while len(self.marks) > 64:
            del self.marks[min(self.marks)]
        return self._mark_ids, t

    def cold(self) -> dict[str, Any]:
        done = [t for t in self.converged_at if t]
        missing = [i for i, t in enumerate(self.converged_at) if not t]
        per_type = [sum(1 for h in self.held if h[ti] is not None) for ti in range(4)]
        return {
            "proxies": len(self.node_ids),
            "converged": len(done),
            "last": max(done) if done else None,
            "first": min(done) if done else None,
            "holding": dict(zip(wire.TYPE_NAMES, per_type, strict=True)),
            "missing": [self.node_ids[i] for i in missing[:3]],
            "stream_errors": len(self.stream_errors),
            "reconnects": self.reconnects,
            "gave_up": self.gave_up,
            "last_error": self.stream_errors[-1] if self.stream_errors else None,
        }

    def _matched(self, st: State | None, expect: dict[str, Any]) -> tuple[str, ...]:
        if st is None:
            return ()
        if "names" in expect:
            return tuple(n for n in expect["names"] if st.held.get(n, ABSENT) != ABSENT)
        needle = expect["refs"]
        return tuple(n for n, d in st.held.items() if d != ABSENT and needle in self.infos[d].refs)

    def stats(self, mark_id: int, expect: dict[str, Any] | None, detail: bool = False) -> dict[str, Any]:
        """Responses since the mark; with `expect` ({"type": "eds", "names": [...]} or
        {"type": "rds", "refs": "<substring>"}): the proxies that held a matching resource at the
        mark (they need the change), how many of them now hold a different version of every such
        resource (done), and the time the last of them first held it (`last_done`)."""
        m = self.marks[mark_id]
        n = len(self.log_t)
        ti = wire.TYPE_NAMES.index(expect["type"]) if expect else -1
        # which proxies need the change, and which resources of theirs it alters
        needs: dict[int, tuple[State, tuple[str, ...]]] = {}
        if expect:
            matched: dict[bytes, tuple[str, ...]] = {}
            for p, states in enumerate(m.states):
                before = states[ti]
                if before is None:
                    continue
                names = matched.get(before.key)
                if names is None:
                    names = matched[before.key] = self._matched(before, expect)
                if names:
                    needs[p] = (before, names)
        differs: dict[tuple[bytes, bytes], bool] = {}

        def done_with(p: int, st: State | None) -> bool:
            before, names = needs[p]
            key = (before.key, st.key if st is not None else b"")
            ok = differs.get(key)
            if ok is None:
                held = st.held if st is not None else {}
                ok = differs[key] = all(before.held[x] != held.get(x) for x in names)
            return ok

        changed_p: set[int] = set()
        unneeded_p: set[int] = set()
        unneeded = changed_responses = size = 0
        first_done: dict[int, float] = {}
        for k in range(m.idx, n):
            p = self.log_p[k]
            size += self.log_bytes[k]
            if self.log_changed[k]:
                changed_responses += 1
                changed_p.add(p)
                if self.log_type[k] == ti and p in needs and p not in first_done and done_with(p, self.log_state[k]):
                    first_done[p] = self.log_t[k]
            else:
                unneeded += 1
                unneeded_p.add(p)
        out: dict[str, Any] = {
            "t_mark": m.t,
            "responses": n - m.idx,
            "bytes": size,
            "last_rx": self.log_t[n - 1] if n else 0.0,
            "changed_proxies": len(changed_p),
            "changed_responses": changed_responses,
            "unneeded_proxies": len(unneeded_p),
            "unneeded_responses": unneeded,
        }
        if expect:
            done = [p for p in needs if done_with(p, self.held[p][ti])]
            last = max((first_done.get(p, 0.0) for p in done), default=0.0)
            out.update(expected=len(needs), done=len(done), last_done=last or None)
            if detail:
                out["not_done"] = sorted(set(needs) - set(done))
        return out

    def check(self, items: list[tuple[str, str]]) -> dict[str, int]:
        """Per (EDS name, substring): proxies holding that name, and how many hold content with it."""
        holders = good = 0
        cache: dict[bytes, tuple[int, int]] = {}
        for h in self.held:
            st = h[T_EDS]
            if st is None:
                continue
            hit = cache.get(st.key)
            if hit is None:
                hs = gs = 0
                for name, needle in items:
                    d = st.held.get(name, ABSENT)
                    if d != ABSENT:
                        hs += 1
                        gs += needle in self.infos[d].refs
                hit = cache[st.key] = (hs, gs)
            holders += hit[0]
            good += hit[1]
        return {"holders": holders, "good": good}

    def first(self, mark_id: int) -> dict[str, Any]:
        """Per proxy: the first response of each type since the mark (time or None), and counts."""
        m = self.marks[mark_id]
        first: list[list[float | None]] = [[None] * 4 for _ in self.node_ids]
        counts = [0] * len(self.node_ids)
        changed = [0] * len(self.node_ids)
        for k in range(m.idx, len(self.log_t)):
            p, ti = self.log_p[k], self.log_type[k]
            if first[p][ti] is None:
                first[p][ti] = self.log_t[k]
            counts[p] += 1
            changed[p] += self.log_changed[k]
        return {"t_mark": m.t, "first": first, "responses": counts, "changed": changed}

    def responses(self, p: int, mark_id: int | None) -> list[dict[str, Any]]:
        """One proxy's responses (since a mark): time, type, version, nonce, resources, bytes, changed."""
        start = self.marks[mark_id].idx if mark_id else 0
        return [
            {
                "t": self.log_t[k],
                "type": wire.TYPE_NAMES[self.log_type[k]],
                "version": self.log_version[k],
                "nonce": self.log_nonce[k],
                "resources": self.log_n[k],
                "bytes": self.log_bytes[k],
                "changed": bool(self.log_changed[k]),
            }
            for k in range(start, len(self.log_t))
            if self.log_p[k] == p
        ]

    def totals(self) -> dict[str, Any]:
        by_type = [0, 0, 0, 0]
        for ti, size in zip(self.log_type, self.log_bytes, strict=True):
            by_type[ti] += size
        return {
            "responses": len(self.log_t),
            "bytes": sum(by_type),
            "bytes_by_type": dict(zip(wire.TYPE_NAMES, by_type, strict=True)),
            "states": len(self.states),
            "bodies": len(self.infos),
            "stream_errors": len(self.stream_errors),
            "reconnects": self.reconnects,
        }

    def dump(self, path: str, mark_id: int | None = None) -> dict[str, Any]:
        return recording.dump(self, path, mark_id)
