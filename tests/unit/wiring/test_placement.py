"""Which worker serves a secure-port connection (wiring/placement.py), and the main process's hand-over of
the socket (wiring/secure_handover.py) over real socket pairs."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from meshd.api.parse import parse_resource
from meshd.model.store import ConfigStore
from meshd.netlimits import ConnectionGate
from meshd.wiring.placement import AddressBook, Placement, rendezvous, workload_addresses
from meshd.wiring.secure_handover import SecureHandOver, dispatch_pair, receive_connections


def _pod(name: str, namespace: str, ip: str | None) -> dict[str, object]:
    status = {"podIP": ip} if ip else {}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "status": status}


def _entry(name: str, namespace: str, address: str) -> dict[str, object]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"address": address},
    }


def test_rendezvous_is_stable_and_moves_only_a_gone_workers_keys() -> None:
    keys = [f"namespace/ns-{i}" for i in range(400)]
    first = {key: rendezvous(key, [0, 1, 2, 3])[0] for key in keys}
    assert first == {key: rendezvous(key, [3, 2, 1, 0])[0] for key in keys}  # the same whatever the order
    assert all(60 <= n <= 140 for n in Counter(first.values()).values()), Counter(first.values())
    without_2 = {key: rendezvous(key, [0, 1, 3])[0] for key in keys}
    moved = {key for key in keys if without_2[key] != first[key]}
    assert moved == {key for key in keys if first[key] == 2}  # only worker 2's namespaces moved


def test_the_book_places_by_namespace_and_spreads_a_namespace_over_its_share() -> None:
    pairs = [(f"10.0.0.{i}", "big") for i in range(6)] + [("10.0.1.1", "a"), ("10.0.1.2", "a"), ("10.0.2.1", "b")]
    book = AddressBook.of(pairs, workers=2)  # share: 4.5 addresses; "big" holds 6
    assert book.spread == frozenset({"big"})
    assert book.key("10.0.1.2") == "namespace/a"
    assert book.key("::ffff:10.0.2.1") == "namespace/b"  # an IPv4 caller on a dual-stack socket
    assert book.key("10.0.0.3") == "address/10.0.0.3"
    assert book.key("10.9.9.9") is None
    assert AddressBook.of(pairs, workers=1).spread == frozenset()


def test_namespaces_are_packed_within_a_bound_and_otherwise_go_to_their_first_choice() -> None:
    sizes = {f"ns-{i}": 1 + i % 7 for i in range(100)}  # 1..7 addresses each
    pairs = [(f"10.{i}.0.{k}", ns) for i, (ns, size) in enumerate(sizes.items()) for k in range(size)]
    book = AddressBook.of(pairs, workers=4)
    load = Counter[int]()
    for ns, worker in book.owner.items():
        load[worker] += sizes[ns]
    share = len(pairs) / 4
    assert max(load.values()) <= math.ceil(1.1 * share), load  # first choices alone: 1.36x here
    first = sum(1 for ns, worker in book.owner.items() if worker == rendezvous(f"namespace/{ns}", range(4))[0])
    assert first >= 60, first  # most keep their first choice: placements hardly move as the mesh changes
    assert AddressBook.of(list(reversed(pairs)), workers=4).owner == book.owner  # the same from the same book
    placement = Placement(random.Random(1))
    owner = book.owner["ns-3"]
    address = next(a for a, ns in pairs if ns == "ns-3")
    assert placement.order(book, address, [0, 1, 2, 3])[0] == owner
    rest = [w for w in range(4) if w != owner]
    assert placement.order(book, address, rest) == rendezvous("namespace/ns-3", rest)  # its worker down


def test_workload_addresses_are_pod_ips_and_workload_entry_addresses() -> None:
    resources = [
        parse_resource(_pod("a", "ns-a", "10.0.0.1")),
        parse_resource(_pod("pending", "ns-a", None)),
        parse_resource(_entry("vm", "ns-vm", "10.0.9.1")),
        parse_resource(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns-a", "namespace": ""}, "spec": {}}
        ),
    ]
    assert workload_addresses(resources) == [("10.0.0.1", "ns-a"), ("10.0.9.1", "ns-vm")]


def test_an_unknown_caller_goes_to_a_random_live_worker() -> None:
    placement = Placement(random.Random(7))
    book = AddressBook.of([("10.0.0.1", "a")], workers=3)
    firsts = Counter(placement.order(book, "192.0.2.1", [0, 1, 2])[0] for _ in range(300))
    assert set(firsts) == {0, 1, 2} and min(firsts.values()) > 60, firsts
    assert sorted(placement.order(book, "192.0.2.1", [0, 2])) == [0, 2]  # every live one, to try in turn
    known = {tuple(placement.order(book, "10.0.0.1", [0, 1, 2])) for _ in range(20)}
    assert len(known) == 1  # a known caller: always the same order
    assert placement.order(book, "10.0.0.1", []) == []


@dataclass
class _Outlet:
    index: int
    ready: bool
    dispatch: socket.socket | None


@pytest.fixture
def store() -> ConfigStore:
    store = ConfigStore()
    resources = [parse_resource(_pod(f"p{i}", f"ns-{i}", f"10.0.0.{i}")) for i in range(20)]
    store.replace_origin("test", {r.key: r for r in resources})
    store.mark_loaded()
    return store


def _handover(store: ConfigStore, outlets: list[_Outlet], clock: list[float] | None = None) -> SecureHandOver:
    gate = ConnectionGate(name="x", max_connections=10, on_refused=lambda: None)
    now = clock if clock is not None else [0.0]
    return SecureHandOver(
        listener=gate,  # type: ignore[arg-type]  # hand_over never touches the listener
        workers=lambda: outlets,
        store=store,
        count=len(outlets),
        on_dropped=lambda: None,
        now=lambda: now[0],
        sleep=asyncio.sleep,
        log=logging.getLogger("test"),
    )


def _received(sock: socket.socket) -> list[int]:
    sock.setblocking(False)
    fds: list[int] = []
    while True:
        try:
            _, got, _, _ = socket.recv_fds(sock, 16, 8)
        except BlockingIOError:
            return fds
        fds += got


@dataclass
class _Wired:
    pairs: list[tuple[socket.socket, socket.socket]]  # per worker: (the main process's end, the worker's)
    client: socket.socket
    accepted: socket.socket  # the client's connection as the main process accepted it


@pytest.fixture
def wired() -> Iterator[_Wired]:
    pairs = [dispatch_pair() for _ in range(2)]
    client, accepted = socket.socketpair()
    yield _Wired(pairs, client, accepted)
    for sock in (client, accepted, *(end for pair in pairs for end in pair)):
        sock.close()


def test_a_connection_is_handed_to_its_namespaces_worker_and_stays_the_same_connection(
    store: ConfigStore, wired: _Wired
) -> None:
    pairs = wired.pairs
    handover = _handover(store, [_Outlet(i, True, pairs[i][0]) for i in range(2)])
    expected = handover.book().owner["ns-5"]
    assert handover.hand_over(wired.accepted, "10.0.0.5")
    wired.accepted.close()  # the main process's copy
    fds = _received(pairs[expected][1])
    assert len(fds) == 1 and _received(pairs[1 - expected][1]) == []
    with socket.socket(fileno=fds[0]) as adopted:
        wired.client.sendall(b"hello")
        assert adopted.recv(5) == b"hello"  # the very connection the client opened


def test_a_worker_that_cannot_take_it_is_skipped_and_with_none_it_is_dropped(store: ConfigStore, wired: _Wired) -> None:
    pairs = wired.pairs
    outlets = [_Outlet(i, True, pairs[i][0]) for i in range(2)]
    handover = _handover(store, outlets)
    preferred = handover.book().owner["ns-3"]
    other = 1 - preferred
    outlets[preferred].dispatch = None  # exited: its pair is gone
    assert handover.hand_over(wired.accepted, "10.0.0.3")
    assert len(_received(pairs[other][1])) == 1
    outlets[preferred].dispatch = pairs[preferred][0]
    pairs[preferred][1].close()  # its end closed under us (it died): the send fails, the next takes it
    assert handover.hand_over(wired.accepted, "10.0.0.3")
    assert len(_received(pairs[other][1])) == 1
    outlets[other].dispatch = None
    assert not handover.hand_over(wired.accepted, "10.0.0.3")  # nobody: dropped (counted by the caller)


def test_a_ready_worker_is_preferred_and_the_book_follows_the_store(store: ConfigStore, wired: _Wired) -> None:
    pairs = wired.pairs
    outlets = [_Outlet(i, i == 1, pairs[i][0]) for i in range(2)]  # worker 0 still loading
    clock = [100.0]
    handover = _handover(store, outlets, clock)
    for i in range(20):
        assert handover.hand_over(wired.accepted, f"10.0.0.{i}")
    assert len(_received(pairs[1][1])) == 20 and _received(pairs[0][1]) == []
    assert handover.book().key("10.0.7.7") is None
    moved = parse_resource(_pod("p-new", "ns-new", "10.0.7.7"))
    store.replace_origin("more", {moved.key: moved})
    clock[0] += 0.5
    assert handover.book().key("10.0.7.7") is None  # read at most once a second
    clock[0] += 0.5
    assert handover.book().key("10.0.7.7") == "namespace/ns-new"  # read again once the store changed


async def _until(condition: Callable[[], bool]) -> bool:
    for _ in range(10_000):  # each turn of the loop polls the descriptors once
        if condition():
            return True
        await asyncio.sleep(0)
    return condition()


async def test_a_worker_adopts_every_descriptor_it_is_passed() -> None:
    main_end, worker_end = dispatch_pair()
    adopted: list[int] = []
    stop = receive_connections(worker_end, adopted.append, logging.getLogger("test"))
    client, accepted = socket.socketpair()
    try:
        for _ in range(3):
            socket.send_fds(main_end, [b"c"], [accepted.fileno()])
        assert await _until(lambda: len(adopted) == 3)
        main_end.close()  # the main process gone: the worker stops reading
        assert await _until(lambda: worker_end.fileno() == -1)
    finally:
        stop()
        for fd in adopted:
            socket.socket(fileno=fd).close()
        client.close()
        accepted.close()


def test_before_the_stores_first_load_the_book_is_read_at_every_change() -> None:
    store = ConfigStore()  # the sources are still listing
    clock = [0.0]
    handover = _handover(store, [], clock)
    assert handover.book().key("10.0.0.1") is None
    pod = parse_resource(_pod("p", "ns-a", "10.0.0.1"))
    store.replace_origin("test", {pod.key: pod})
    clock[0] += 0.1
    assert handover.book().key("10.0.0.1") == "namespace/ns-a"  # no waiting for the interval
    store.mark_loaded()
    clock[0] += 0.1
    handover.book()
    other = parse_resource(_pod("q", "ns-b", "10.0.0.2"))
    store.replace_origin("more", {other.key: other})
    clock[0] += 0.1
    assert handover.book().key("10.0.0.2") is None  # loaded: at most once per interval from now on
