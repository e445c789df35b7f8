"""invoice-status: three-way match of supplier invoices against PO versions and receipts (DESIGN §5.4)."""
