"""lightning-tricks: Karpathy's recipe for training neural networks as PyTorch Lightning callbacks.

Public names are imported on first use (PEP 562), so ``lightning-tricks --help`` answers without
importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it. Every name is an attribute of its module, except the
# ones in _MODULES, which are modules themselves (`from lightning_tricks import schedules`).
_EXPORTS = {
    "SeedEverything": "lightning_tricks.callbacks",
    "FullDatasetLoss": "lightning_tricks.callbacks",
    "ActivationStats": "lightning_tricks.callbacks",
    "PredictionDynamics": "lightning_tricks.callbacks",
    "FirstLayerFilters": "lightning_tricks.callbacks",
    "HumanBaseline": "lightning_tricks.callbacks",
    "InitLossCheck": "lightning_tricks.callbacks",
    "GradientDependencyProbe": "lightning_tricks.callbacks",
    "OverfitBatchCheck": "lightning_tricks.callbacks",
    "InputIndependentBaseline": "lightning_tricks.callbacks",
    "InterruptCheckpoint": "lightning_tricks.callbacks",
    "TrainingInterrupted": "lightning_tricks.callbacks",
    "LastLayerBiasInit": "lightning_tricks.callbacks",
    "OptunaPruning": "lightning_tricks.callbacks",
    "LRRangeTest": "lightning_tricks.callbacks",
    "LRBatchScaling": "lightning_tricks.callbacks",
    "BatchSizeSchedule": "lightning_tricks.callbacks",
    "DataInspection": "lightning_tricks.callbacks",
    "DropoutBatchNormLint": "lightning_tricks.callbacks",
    "EarlyStopping": "lightning_tricks.callbacks",
    "lr_range_test": "lightning_tricks.callbacks.lr_range_test",
    "ShuffleCheck": "lightning_tricks.callbacks",
    "TestTimeAugmentation": "lightning_tricks.callbacks",
    "TrainingHealthCheck": "lightning_tricks.callbacks",
    "VisualizeBatch": "lightning_tricks.callbacks",
    "RecipeCheckError": "lightning_tricks.callbacks",
    "run_preflight": "lightning_tricks.preflight",
    "assert_preflight": "lightning_tricks.preflight",
    "PreflightReport": "lightning_tricks.preflight",
    "AdapterError": "lightning_tricks.utilities.protocol",
    "ModelAdapter": "lightning_tricks.utilities.protocol",
    "TrickModule": "lightning_tricks.utilities.protocol",
    "inspect_data": "lightning_tricks.inspection.scan",
    "DataReport": "lightning_tricks.inspection.report",
    "log_image": "lightning_tricks.utilities.media",
    "log_scalars": "lightning_tricks.utilities.media",
    "log_table": "lightning_tricks.utilities.media",
    "CheckpointEnsemble": "lightning_tricks.callbacks",
    "EnsembleReport": "lightning_tricks.ensembling.checkpoints",
    "CheckpointError": "lightning_tricks.ensembling.checkpoints",
    "ResumableDataLoader": "lightning_tricks.data",
}
_MODULES = {"schedules": "lightning_tricks.schedules"}

__all__ = [
    "ActivationStats",
    "AdapterError",
    "BatchSizeSchedule",
    "CheckpointEnsemble",
    "CheckpointError",
    "DataInspection",
    "DataReport",
    "DropoutBatchNormLint",
    "EarlyStopping",
    "EnsembleReport",
    "FirstLayerFilters",
    "FullDatasetLoss",
    "GradientDependencyProbe",
    "HumanBaseline",
    "InitLossCheck",
    "InputIndependentBaseline",
    "InterruptCheckpoint",
    "LRBatchScaling",
    "LRRangeTest",
    "LastLayerBiasInit",
    "ModelAdapter",
    "OptunaPruning",
    "OverfitBatchCheck",
    "PredictionDynamics",
    "PreflightReport",
    "RecipeCheckError",
    "ResumableDataLoader",
    "SeedEverything",
    "ShuffleCheck",
    "TestTimeAugmentation",
    "TrainingHealthCheck",
    "TrainingInterrupted",
    "TrickModule",
    "VisualizeBatch",
    "__version__",
    "assert_preflight",
    "inspect_data",
    "log_image",
    "log_scalars",
    "log_table",
    "lr_range_test",
    "run_preflight",
    "schedules",
]

if TYPE_CHECKING:
    from lightning_tricks import schedules
    from lightning_tricks.callbacks import (
        ActivationStats,
        BatchSizeSchedule,
        CheckpointEnsemble,
        DataInspection,
        DropoutBatchNormLint,
        EarlyStopping,
        FirstLayerFilters,
        FullDatasetLoss,
        GradientDependencyProbe,
        HumanBaseline,
        InitLossCheck,
        InputIndependentBaseline,
        InterruptCheckpoint,
        LastLayerBiasInit,
        LRBatchScaling,
        LRRangeTest,
        OptunaPruning,
        OverfitBatchCheck,
        PredictionDynamics,
        RecipeCheckError,
        SeedEverything,
        ShuffleCheck,
        TestTimeAugmentation,
        TrainingHealthCheck,
        TrainingInterrupted,
        VisualizeBatch,
    )
    from lightning_tricks.callbacks.lr_range_test import lr_range_test
    from lightning_tricks.data import ResumableDataLoader
    from lightning_tricks.ensembling.checkpoints import CheckpointError, EnsembleReport
    from lightning_tricks.inspection.report import DataReport
    from lightning_tricks.inspection.scan import inspect_data
    from lightning_tricks.preflight import PreflightReport, assert_preflight, run_preflight
    from lightning_tricks.utilities.media import log_image, log_scalars, log_table
    from lightning_tricks.utilities.protocol import AdapterError, ModelAdapter, TrickModule


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if name in _EXPORTS:
        # An attribute, never the module of the same name: `lr_range_test` is the function of
        # lightning_tricks.callbacks.lr_range_test, not that module.
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lightning_tricks' has no attribute {name!r}")
