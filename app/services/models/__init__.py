"""Models and their jobs: the catalogue (versions, serving, rollback, policy), registration, unlearning
job state, the erasure scheduler, compute accounting and bulk ingest of samples."""
