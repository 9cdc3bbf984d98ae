"""hub: the central service (ingest, reading room, dashboard)."""
