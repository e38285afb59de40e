"""The fraud-model study and production training, as a small library.

    data     load the featurized table, Handbook folds, history noise
    models   every model of the study (one attention architecture with switches, plus baselines)
    fit      the training loop shared by all neural models, and the gradient-boosting baseline
    metrics  AUC ROC, average precision, card precision@100, calibration, per-scenario recall
    export   ONNX export, ONNX Runtime checks and timing, golden rows, manifests

`study.py` runs the comparison grid; `train_fraud.py` trains and exports the production model.
"""
