"""PortPool: even/odd pairs and single ports bound on loopback, skipping ports others hold."""

from __future__ import annotations

import socket

import pytest

from services.media.ports import PortPool
from services.media.relay import PortsExhausted
from tests.media.helpers import free_udp_range


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_pairs_are_even_odd_and_really_bound():
    low = free_udp_range(8)
    pool = PortPool("127.0.0.1", low, low + 7)
    try:
        first = pool.allocate(2)
        assert first == (low, low + 1)
        assert not bindable(low) and not bindable(low + 1)
        single = pool.allocate(1)
        assert single == (low + 2,)
        assert pool.allocate(2) == (low + 4, low + 5)  # low+3 is odd: no pair starts there
        assert len(pool) == 5
        pool.release(first)
        assert bindable(low) and bindable(low + 1)
        # The search goes on from where it was: the freed pair is not handed out at once.
        assert pool.allocate(2) == (low + 6, low + 7)
        assert pool.allocate(2) == (low, low + 1)
        with pytest.raises(PortsExhausted, match=f"{low}-{low + 7} on 127.0.0.1"):
            pool.allocate(2)
        assert pool.allocate(1) == (low + 3,)
    finally:
        pool.close()
    assert all(bindable(low + i) for i in range(8))


def test_ports_held_by_others_are_skipped():
    low = free_udp_range(6)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.bind(("127.0.0.1", low + 1))  # breaks the first pair
        pool = PortPool("127.0.0.1", low, low + 5)
        try:
            assert pool.allocate(2) == (low + 2, low + 3)
            assert pool.probe() is None
            assert pool.allocate(2) == (low + 4, low + 5)
            assert "cannot bind an even/odd port pair" in (pool.probe() or "")
        finally:
            pool.close()


def test_an_address_not_on_this_host_is_an_error_not_exhaustion():
    pool = PortPool("192.0.2.1", 20000, 20009)
    with pytest.raises(OSError):
        pool.allocate(2)
    assert "Cannot assign requested address" in (pool.probe() or "")


def test_bad_ranges():
    with pytest.raises(ValueError, match="port range"):
        PortPool("127.0.0.1", 30000, 30000)
    with pytest.raises(ValueError, match="port range"):
        PortPool("127.0.0.1", 0, 10)
