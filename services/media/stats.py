"""Receiver statistics for one direction of one stream: RFC 3550 loss and jitter.

- Loss (RFC 3550 appendix A.1 and A.3): per SSRC, the extended highest sequence number
  (16-bit sequence plus a cycle count, so wrap-around at 65535 -> 0 is handled) minus the first
  sequence number, plus one, is the number of packets expected; expected minus received is the
  number lost. A jump of more than MAX_DROPOUT ahead (or MAX_MISORDER behind) is taken as a
  sender restart once two packets in a row confirm it. Unlike A.1 there is no probation: a
  source counts from its first packet (the relay protects no decoder, and a probation would
  hide the loss of the first packets). Duplicates can make "lost" negative in RFC 3550; we
  report 0 instead.
- Jitter (RFC 3550 section 6.4.1): for consecutive packets i, j of one SSRC,
  D(i,j) = (Rj - Ri) - (Sj - Si) in RTP timestamp units (R: arrival time times the clock
  rate, S: the RTP timestamp), and J += (|D| - J) / 16. We keep J in seconds (J / clock rate),
  so that a payload-type switch with another clock rate does not corrupt it. Consecutive
  packets with the same timestamp (the packets of one RFC 4733 telephone event, the fragments
  of one video frame) or with different payload types only move the reference point: the
  2833/4733 event packets carry the event's start timestamp for its whole duration and would
  otherwise show as tens of milliseconds of jitter.

Pure: no clock, the arrival time comes in as an argument.
"""

from __future__ import annotations

from collections import OrderedDict

from services.media.events import Address
from services.media.rtp import RtpHeader

SEQ_MOD = 1 << 16
MAX_DROPOUT = 3000
MAX_MISORDER = 100
MAX_SOURCES = 8  # SSRCs tracked per direction; the least recently heard is folded away

# RFC 3551 static payload types with a clock rate other than the 8000 default.
STATIC_CLOCK_RATES = {
    6: 16000,  # DVI4/16000
    10: 44100,  # L16 stereo
    11: 44100,  # L16 mono
    14: 90000,  # MPA
    16: 11025,  # DVI4/11025
    17: 22050,  # DVI4/22050
    25: 90000,  # CelB
    26: 90000,  # JPEG
    28: 90000,  # nv
    31: 90000,  # H261
    32: 90000,  # MPV
    33: 90000,  # MP2T
    34: 90000,  # H263
}


class SourceStats:
    """Sequence-number and jitter state of one SSRC (RFC 3550 A.1 / 6.4.1)."""

    __slots__ = (
        "bad_seq",
        "base_seq",
        "cycles",
        "jitter",
        "last_arrival",
        "last_payload_type",
        "last_timestamp",
        "lost_before",
        "max_seq",
        "received",
    )

    def __init__(self, sequence: int) -> None:
        self.lost_before = 0  # loss counted before a resynchronisation
        self._init(sequence)
        self.received = 1
        self.jitter = 0.0  # seconds
        self.last_arrival: float | None = None
        self.last_timestamp = 0
        self.last_payload_type = -1

    def _init(self, sequence: int) -> None:
        self.base_seq = sequence
        self.max_seq = sequence
        self.bad_seq = SEQ_MOD + 1  # so seq == bad_seq is false
        self.cycles = 0
        self.received = 0

    @property
    def expected(self) -> int:
        return self.cycles + self.max_seq - self.base_seq + 1

    @property
    def lost(self) -> int:
        return self.lost_before + max(0, self.expected - self.received)

    def update_sequence(self, sequence: int) -> bool:
        """Account one packet; False when it looks like a stray from far away (not counted)."""
        udelta = (sequence - self.max_seq) % SEQ_MOD
        if udelta < MAX_DROPOUT:  # in order, with a permissible gap
            if sequence < self.max_seq:
                self.cycles += SEQ_MOD  # wrapped
            self.max_seq = sequence
        elif udelta <= SEQ_MOD - MAX_MISORDER:  # a very large jump
            if sequence != self.bad_seq:
                self.bad_seq = (sequence + 1) % SEQ_MOD
                return False
            # Two sequential packets after the jump: the sender restarted; resynchronise.
            self.lost_before = self.lost
            self._init(sequence)
        # else: a duplicate or reordered packet; counted as received, as in A.1
        self.received += 1
        return True

    def update_jitter(
        self, arrival: float, timestamp: int, payload_type: int, clock_rate: int
    ) -> None:
        if (
            self.last_arrival is not None
            and payload_type == self.last_payload_type
            and timestamp != self.last_timestamp
        ):
            elapsed = (timestamp - self.last_timestamp) % (1 << 32)
            if elapsed >= 1 << 31:  # the timestamp went backwards
                elapsed -= 1 << 32
            d = (arrival - self.last_arrival) - elapsed / clock_rate
            self.jitter += (abs(d) - self.jitter) / 16
        self.last_arrival = arrival
        self.last_timestamp = timestamp
        self.last_payload_type = payload_type


class DirectionStats:
    """Everything counted for the packets one leg sends on one stream."""

    __slots__ = (
        "current",
        "dropped",
        "fast_path_bytes",
        "fast_path_packets",
        "last_packet_at",
        "last_rtp_at",
        "latched",
        "lost_evicted",
        "malformed",
        "rtcp_packets",
        "rtp_bytes",
        "rtp_packets",
        "sources",
    )

    def __init__(self) -> None:
        self.rtp_packets = 0  # userspace and fast path together
        self.rtp_bytes = 0
        self.rtcp_packets = 0
        self.malformed = 0
        self.dropped = 0
        self.fast_path_packets = 0
        self.fast_path_bytes = 0
        self.last_packet_at: float | None = None
        self.last_rtp_at: float | None = None
        self.latched: Address | None = None  # the RTP source, kept after the ports are gone
        self.sources: OrderedDict[int, SourceStats] = OrderedDict()
        self.current: SourceStats | None = None
        self.lost_evicted = 0

    def on_rtp(self, header: RtpHeader, size: int, arrival: float, clock_rate: int) -> None:
        self.rtp_packets += 1
        self.rtp_bytes += size
        self.last_packet_at = self.last_rtp_at = arrival
        source = self.sources.get(header.ssrc)
        if source is None:
            if len(self.sources) >= MAX_SOURCES:
                _, evicted = self.sources.popitem(last=False)
                self.lost_evicted += evicted.lost
            source = self.sources[header.ssrc] = SourceStats(header.sequence)
        else:
            self.sources.move_to_end(header.ssrc)
            if not source.update_sequence(header.sequence):
                return
        source.update_jitter(arrival, header.timestamp, header.payload_type, clock_rate)
        self.current = source

    def on_fast_path(self, packets: int, size: int, now: float) -> None:
        self.rtp_packets += packets
        self.rtp_bytes += size
        self.fast_path_packets += packets
        self.fast_path_bytes += size
        self.last_packet_at = self.last_rtp_at = now

    @property
    def lost(self) -> int:
        return self.lost_evicted + sum(s.lost for s in self.sources.values())

    @property
    def jitter(self) -> float:
        """Interarrival jitter of the SSRC heard last, in seconds."""
        return self.current.jitter if self.current is not None else 0.0
