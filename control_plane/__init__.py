"""control-plane: policy as code, its distribution, and the audit trail."""
