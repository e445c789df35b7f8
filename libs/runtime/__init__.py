"""The shared service runtime: settings, server bootstrap, JetStream, idempotency, telemetry."""
