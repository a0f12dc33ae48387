"""User-mode-linux guest harness: real kernel SCTP for tests on a host whose kernel has none."""

from tests.enb.uml.guest import (
    GuestRun,
    capture_in_guest,
    guest_run,
    pytest_argv,
    run_in_guest,
    uml_binary,
)

__all__ = ["GuestRun", "capture_in_guest", "guest_run", "pytest_argv", "run_in_guest",
           "uml_binary"]
