"""volte services: sbc, media, enb-agent and state, plus the code they share."""

# The single source of the version: hatch reads it for the wheel, the CLIs print it.
__version__ = "0.1.0"
