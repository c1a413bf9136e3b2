"""Lethe's own files: the pending-deletion list drained after commit and the orphan sweep (files change
only after the database stops needing them)."""
