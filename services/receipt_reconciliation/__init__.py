"""receipt-reconciliation: goods receipts and returns reconciled line by line against the purchase order."""
