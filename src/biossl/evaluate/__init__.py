"""Evaluation of frozen encoders: pooled and frame-level features, linear/few-label probes, kNN,
the MFCC baseline of waveform datasets, tables."""
from biossl.evaluate.features import extract_features, standardize
from biossl.evaluate.frames import extract_stage_features, frame_pool, frame_probe, select_frames
from biossl.evaluate.knn import knn_accuracy, knn_predict
from biossl.evaluate.mfcc import MFCC_LABEL, is_waveform, mfcc_stage
from biossl.evaluate.probe import (few_label_epochs, few_label_probe, linear_probe,
                                   select_per_class, train_linear)
from biossl.evaluate.table import (ProbeRow, evaluate_encoder, evaluate_mfcc, evaluate_stages,
                                   format_table, has_frames, limit_splits, plot_rows, protocol_string,
                                   write_csv)

__all__ = [
    "extract_features", "standardize", "knn_accuracy", "knn_predict", "linear_probe",
    "few_label_probe", "few_label_epochs", "select_per_class", "train_linear", "ProbeRow",
    "evaluate_encoder", "format_table", "plot_rows", "protocol_string", "write_csv",
    "extract_stage_features", "frame_pool", "frame_probe", "select_frames", "MFCC_LABEL", "is_waveform",
    "mfcc_stage", "evaluate_mfcc", "evaluate_stages", "has_frames", "limit_splits",
]
