"""edge: the clinic box (DICOM intake, durable store, sync, clinic page)."""
