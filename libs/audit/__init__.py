"""The audit trail's hash chain: pure functions to seal and verify entries."""
