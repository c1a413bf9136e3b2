"""Quick verification of an unlearning candidate: membership inference + utility gates (DESIGN.md 4)."""
