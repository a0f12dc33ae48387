"""Helpers every service shares: configuration, telemetry, gRPC health."""
