"""Versioned model files on disk: atomic writes, checksums, manifests (see models_store.store)."""
