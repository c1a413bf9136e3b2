"""Plain-PyTorch machine-learning core of Lethe: model specs, training, checkpoints.

Nothing here imports the DB, FastAPI or Celery (STYLE.md, direction of imports).
"""
