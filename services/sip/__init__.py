"""The SIP protocol core: sans-IO parser, serializer and transaction layer, plus thin transports."""

from services.sip.errors import FramingError, ParseError
from services.sip.headers import CSeq, Headers, NameAddr, Via, parse_name_addr, parse_via
from services.sip.message import (
    DEFAULT_LIMITS,
    Message,
    ParserLimits,
    Request,
    Response,
    make_response,
    parse_message,
)
from services.sip.uri import URI, parse_uri

__all__ = [
    "DEFAULT_LIMITS",
    "URI",
    "CSeq",
    "FramingError",
    "Headers",
    "Message",
    "NameAddr",
    "ParseError",
    "ParserLimits",
    "Request",
    "Response",
    "Via",
    "make_response",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
]
