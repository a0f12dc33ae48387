"""RTP for simulated UEs: G.711 at 20 ms (50 packets/s), counting what arrives.

Enough RTP to prove media flows both ways through the relay ("no audio" is the complaint
labs have most): a sender with increasing sequence numbers and timestamps, and a receiver
that counts packets and remembers where they came from.

A call on hold pauses the sender (`pause()` / `resume()`): no packets meanwhile, then the
sequence numbers go on from where they stopped (no gap, so the relay counts no loss) while the
timestamp jumps by the time spent on hold, as a real handset's does. A re-INVITE that moves
the other side's address moves the sender too (`destination`).
"""

from __future__ import annotations

import asyncio
import os
import struct
from dataclasses import dataclass, field

from services.sip.transport import Address

PACKET_INTERVAL = 0.02  # 20 ms of G.711
PAYLOAD = bytes(160)  # 20 ms of PCMU at 8 kHz


@dataclass
class RtpStream:
    """One UE's RTP socket for one call."""

    received: int = 0
    sent: int = 0
    sources: set[Address] = field(default_factory=set)
    _transport: asyncio.DatagramTransport | None = None
    _sending: asyncio.Task[None] | None = None
    local: Address = ("", 0)
    destination: Address | None = None  # where RTP goes (what the other side's SDP names)
    paused: bool = False  # on hold: nothing is sent

    async def open(self, host: str) -> Address:
        loop = asyncio.get_running_loop()
        stream = self

        class _Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
                if len(data) >= 12 and data[0] >> 6 == 2:
                    stream.received += 1
                    stream.sources.add((str(addr[0]), int(addr[1])))

        transport, _ = await loop.create_datagram_endpoint(_Protocol, local_addr=(host, 0))
        self._transport = transport
        self.local = transport.get_extra_info("sockname")[:2]
        return self.local

    def start(self, destination: Address, seconds: float) -> None:
        """Send to `destination` at 50 packets/s for `seconds` (bounded), in the background."""
        self.destination = destination
        self._sending = asyncio.get_running_loop().create_task(self._send(seconds))

    def pause(self) -> None:
        """Stop sending until `resume()` (the call is on hold); receiving goes on."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False

    async def _send(self, seconds: float) -> None:
        assert self._transport is not None
        ssrc = int.from_bytes(os.urandom(4), "big")
        seq = 0
        for tick in range(max(1, int(seconds / PACKET_INTERVAL))):
            if not self.paused and self.destination is not None:
                header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (tick * 160) & 0xFFFFFFFF,
                                     ssrc)
                self._transport.sendto(header + PAYLOAD, self.destination)
                self.sent += 1
                seq += 1
            await asyncio.sleep(PACKET_INTERVAL)

    def stop(self) -> None:
        if self._sending is not None:
            self._sending.cancel()
        if self._transport is not None:
            self._transport.close()
