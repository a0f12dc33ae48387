"""The media relay service (the media half of the SBC split): `python -m services.media`.

Modules, one concern each: `rtp` (RTP/RTCP headers), `stats` (RFC 3550 loss and jitter),
`relay` (the sans-IO core: sessions, ports, latching, forwarding; its docstring states the
direction convention), `fastpath` (the kernel fast-path interface), `ports` (relay sockets),
`config` (options), `service` (the gRPC shell). `xdp/` is the XDP fast path behind the
`fastpath` interface.
"""
