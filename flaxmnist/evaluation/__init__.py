"""Evaluation and use: reloading a run, metrics, figures, the report, predictions, exports."""
