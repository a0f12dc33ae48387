"""RFC 3550 loss (A.1/A.3) and interarrival jitter (6.4.1) against hand-computed values."""

from __future__ import annotations

import pytest

from services.media.rtp import parse_rtp
from services.media.stats import MAX_SOURCES, DirectionStats, SourceStats
from tests.media.packets import rtp, telephone_event


def loss(seqs: list[int]) -> tuple[int, int, int]:
    """(expected, received, lost) after `seqs`."""
    source = SourceStats(seqs[0])
    for seq in seqs[1:]:
        source.update_sequence(seq)
    return source.expected, source.received, source.lost


def test_no_loss():
    assert loss(list(range(1, 51))) == (50, 50, 0)


def test_one_gap():
    # 1 2 3 _ 5 6: expected 6 - 1 + 1 = 6, received 5, lost 1
    assert loss([1, 2, 3, 5, 6]) == (6, 5, 1)


def test_sequence_wrap():
    # 65533 65534 65535 _ 1 2: extended max 65536 + 2, expected 65538 - 65533 + 1 = 6
    assert loss([65533, 65534, 65535, 1, 2]) == (6, 5, 1)
    assert loss([65535, 0, 1]) == (3, 3, 0)


def test_many_wraps():
    seqs = [i % 65536 for i in range(65000, 65000 + 3 * 65536, 7)]  # every 7th: 6 of 7 lost
    n = len(seqs)
    assert loss(seqs) == (7 * (n - 1) + 1, n, 6 * (n - 1))


def test_reordering_is_not_loss():
    assert loss([1, 2, 4, 3, 5]) == (5, 5, 0)


def test_duplicates_do_not_make_loss_negative():
    assert loss([1, 2, 2, 3]) == (3, 4, 0)


def test_stray_far_packet_is_ignored():
    # 30000 is more than MAX_DROPOUT ahead: not counted unless 30001 confirms it.
    assert loss([100, 101, 30000, 102]) == (3, 3, 0)


def test_sender_restart_resynchronises_and_keeps_earlier_loss():
    # 100 _ 102: one lost; 30000 30001 confirm a restart at 30001; _ 30003: one more.
    source = SourceStats(100)
    for seq in (102, 30000, 30001, 30003):
        source.update_sequence(seq)
    assert source.lost == 2
    assert source.base_seq == 30001


def feed(arrivals: list[float], stamps: list[int], rate: int = 8000, pts: list[int] | None = None
         ) -> list[float]:
    source = SourceStats(0)
    out = []
    for i, (arrival, ts) in enumerate(zip(arrivals, stamps, strict=True)):
        source.update_jitter(arrival, ts, (pts or [0] * len(stamps))[i], rate)
        out.append(source.jitter)
    return out


def test_jitter_hand_computed():
    # 20 ms packets (160 samples at 8 kHz); the third arrives 5 ms late.
    # p2: D = 160 - 160 = 0                     J = 0
    # p3: D = (0.045 - 0.020) * 8000 - 160 = 40  J = 0 + (40 - 0) / 16 = 2.5 samples
    # p4: D = (0.060 - 0.045) * 8000 - 160 = -40 J = 2.5 + (40 - 2.5) / 16 = 4.84375 samples
    jitter = feed([0.0, 0.020, 0.045, 0.060], [0, 160, 320, 480])
    assert jitter[:2] == [0.0, 0.0]
    assert jitter[2] == pytest.approx(2.5 / 8000)  # 312.5 µs
    assert jitter[3] == pytest.approx(4.84375 / 8000)  # 605.47 µs


def test_jitter_uses_the_clock_rate():
    # The same timing at 16 kHz (320 samples per 20 ms) is the same jitter in seconds.
    assert feed([0.0, 0.020, 0.045, 0.060], [0, 320, 640, 960], rate=16000)[3] == pytest.approx(
        4.84375 / 8000
    )


def test_jitter_across_timestamp_wrap():
    assert feed([0.0, 0.020, 0.040], [0xFFFFFEC0, 0xFFFFFF60, 0], rate=8000) == [0.0, 0.0, 0.0]


def test_telephone_events_do_not_count_as_jitter():
    # Audio at perfect 20 ms, then an RFC 4733 event: three packets 50 ms apart carrying the
    # event's start timestamp, then audio again.
    stats = DirectionStats()
    t, seq = 0.0, 1
    for _ in range(5):
        stats.on_rtp(parse_rtp(rtp(seq, seq * 160)), 172, t, 8000)
        t, seq = t + 0.020, seq + 1
    event_ts = seq * 160
    for duration in (400, 800, 1200):
        stats.on_rtp(parse_rtp(telephone_event(seq, event_ts, 1, duration)), 16, t, 8000)
        t, seq = t + 0.050, seq + 1
    for _ in range(5):
        stats.on_rtp(parse_rtp(rtp(seq, event_ts + round((t - 0.1) * 8000))), 172, t, 8000)
        t, seq = t + 0.020, seq + 1
    assert stats.jitter == pytest.approx(0.0, abs=1e-9)
    assert stats.lost == 0
    assert stats.rtp_packets == 13


def test_direction_stats_track_each_ssrc():
    stats = DirectionStats()
    for seq in (1, 2, 4):  # one lost on the first SSRC
        stats.on_rtp(parse_rtp(rtp(seq, ssrc=1)), 172, seq * 0.02, 8000)
    for seq in (500, 502, 503):  # one lost on the second
        stats.on_rtp(parse_rtp(rtp(seq, ssrc=2)), 172, seq * 0.02, 8000)
    assert stats.lost == 2
    assert (stats.rtp_packets, stats.rtp_bytes) == (6, 6 * 172)


def test_evicted_sources_keep_their_loss():
    stats = DirectionStats()
    for ssrc in range(MAX_SOURCES + 2):
        for seq in (1, 3):  # one lost each
            stats.on_rtp(parse_rtp(rtp(seq, ssrc=ssrc)), 172, 0.0, 8000)
    assert len(stats.sources) == MAX_SOURCES
    assert stats.lost == MAX_SOURCES + 2
