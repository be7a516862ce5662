"""Evaluation: every policy at matched NFE on held-out samples (compare), one report writer, metrics, plots."""
