"""Evaluation: reloading a run, numpy metrics, matplotlib figures and the HTML report."""
