"""Evaluation of frozen encoders: pooled features, linear/few-label probes, kNN, tables."""
from biossl.evaluate.features import extract_features, standardize
from biossl.evaluate.knn import knn_accuracy, knn_predict
from biossl.evaluate.probe import (few_label_epochs, few_label_probe, linear_probe,
                                   select_per_class, train_linear)
from biossl.evaluate.table import (ProbeRow, evaluate_encoder, format_table, plot_rows,
                                   protocol_string, write_csv)

__all__ = [
    "extract_features", "standardize", "knn_accuracy", "knn_predict", "linear_probe",
    "few_label_probe", "few_label_epochs", "select_per_class", "train_linear", "ProbeRow",
    "evaluate_encoder", "format_table", "plot_rows", "protocol_string", "write_csv",
]
