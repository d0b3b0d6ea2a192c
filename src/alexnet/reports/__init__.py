"""Reports people look at: training curves, confusion matrix, example predictions,
confused pairs and first-layer filters, gathered into one self-contained HTML page.

This layer takes plain data (numpy arrays, dicts) and never imports the
training engine, data loading or the CLI.
"""

from alexnet.reports.html import per_class_rows, write_report

__all__ = ["per_class_rows", "write_report"]
