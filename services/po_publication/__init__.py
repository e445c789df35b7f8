"""po-publication: versioned purchase orders, from approval in procurement to the ERP."""
