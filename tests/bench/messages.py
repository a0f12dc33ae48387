"""Typical messages for the benchmarks: an INVITE of about 900 bytes with SDP, and its 200 OK."""

_SDP = (
    b"v=0\r\n"
    b"o=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.10\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0 8 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=sendrecv\r\n"
)

INVITE = (
    b"INVITE sip:bob@ims.example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"Route: <sip:pcscf.ims.example.net;lr>\r\n"
    b'From: "Alice" <sip:alice@ims.example.net>;tag=1928301774\r\n'
    b"To: <sip:bob@ims.example.net>\r\n"
    b"Call-ID: a84b4c76e66710@192.0.2.10\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:alice@192.0.2.10:5060;transport=udp>"
    b';+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.mmtel"\r\n'
    b"P-Preferred-Identity: <sip:alice@ims.example.net>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, UPDATE, PRACK, OPTIONS, MESSAGE, REFER, NOTIFY\r\n"
    b"Supported: 100rel, timer, precondition, replaces\r\n"
    b"Session-Expires: 1800;refresher=uac\r\n"
    b"User-Agent: volte-bench/1.0\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(_SDP)).encode() + b"\r\n"
    b"\r\n" + _SDP
)

OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKnashds8;received=10.0.0.5\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.10:5060;branch=z9hG4bK776asdhds;rport=5060;received=192.0.2.10\r\n"
    b"Record-Route: <sip:pcscf.ims.example.net;lr>\r\n"
    b'From: "Alice" <sip:alice@ims.example.net>;tag=1928301774\r\n'
    b"To: <sip:bob@ims.example.net>;tag=a6c85cf\r\n"
    b"Call-ID: a84b4c76e66710@192.0.2.10\r\n"
    b"CSeq: 314159 INVITE\r\n"
    b"Contact: <sip:bob@192.0.2.20:5060>\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, UPDATE, PRACK, OPTIONS\r\n"
    b"Supported: 100rel, timer\r\n"
    b"Session-Expires: 1800;refresher=uac\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(_SDP)).encode() + b"\r\n"
    b"\r\n" + _SDP
)
