"""supplier-normalization: one golden record per real supplier, with validated identifiers and provenance."""
