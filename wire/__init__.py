"""wire: the sync protocol shared by box and hub, sans I/O (packing, manifests, acks)."""
