"""Subscriber provisioning through the state service (used by `volte subscribers` and tests).

User N of a provisioned range is `sip:N@domain`, digest username N (the IMPI), IMSI
001 01 N (test PLMN 001/01, zero-padded to 15 digits); only the HA1 hashes are stored.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from services.sip.digest import ha1
from volte.v1 import state_pb2, state_pb2_grpc

TEST_PLMN = "00101"


def imsi_of(number: str) -> str:
    """The IMSI a provisioned subscriber gets unless one is given: PLMN 001 01, MSIN = the
    number zero-padded to 10 digits."""
    return (TEST_PLMN + number.zfill(10))[-15:]


def subscriber(number: str, domain: str, password: str, imsi: str = "") -> state_pb2.Subscriber:
    return state_pb2.Subscriber(
        impi=number,
        impus=[f"sip:{number}@{domain}"],
        imsi=imsi or imsi_of(number),
        msisdn=number,
        credentials=state_pb2.DigestCredentials(
            realm=domain,
            ha1_md5=ha1(number, domain, password, "MD5"),
            ha1_sha256=ha1(number, domain, password, "SHA-256"),
        ),
    )


class Provisioner:
    def __init__(self, state_address: str, timeout: float = 5.0) -> None:
        self.channel = grpc.insecure_channel(state_address)
        self.stub = state_pb2_grpc.StateStoreStub(self.channel)
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def add(self, sub: state_pb2.Subscriber) -> None:
        self.stub.PutSubscriber(state_pb2.PutSubscriberRequest(subscriber=sub),
                                timeout=self.timeout)

    def provision(self, count: int, start: int, domain: str, password: str) -> int:
        for n in range(start, start + count):
            self.add(subscriber(str(n), domain, password))
        return count

    def delete(self, impi: str) -> bool:
        reply = self.stub.DeleteSubscriber(state_pb2.DeleteSubscriberRequest(impi=impi),
                                           timeout=self.timeout)
        return bool(reply.deleted)

    def list(self, page: int = 500) -> Iterator[state_pb2.Subscriber]:
        after = ""
        while True:
            reply = self.stub.ListSubscribers(
                state_pb2.ListSubscribersRequest(after_impi=after, limit=page),
                timeout=self.timeout,
            )
            yield from reply.subscribers
            if len(reply.subscribers) < page:
                return
            after = reply.subscribers[-1].impi
