"""lightning-tricks: Karpathy's recipe for training neural networks as PyTorch Lightning callbacks.

Public names are imported on first use (PEP 562), so ``lightning-tricks --help`` answers without
importing torch and Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

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
    "LastLayerBiasInit": "lightning_tricks.callbacks",
    "OptunaPruning": "lightning_tricks.callbacks",
    "LRRangeTest": "lightning_tricks.callbacks",
    "LRBatchScaling": "lightning_tricks.callbacks",
    "BatchSizeSchedule": "lightning_tricks.callbacks",
    "DataInspection": "lightning_tricks.callbacks",
    "DropoutBatchNormLint": "lightning_tricks.callbacks",
    "EarlyStopping": "lightning_tricks.callbacks",
    "schedules": "lightning_tricks.schedules",
    "lr_range_test": "lightning_tricks.callbacks.lr_range_test",
    "ShuffleCheck": "lightning_tricks.callbacks",
    "TestTimeAugmentation": "lightning_tricks.callbacks",
    "TrainingHealthCheck": "lightning_tricks.callbacks",
    "VisualizeBatch": "lightning_tricks.callbacks",
    "RecipeCheckError": "lightning_tricks.callbacks",
    "run_preflight": "lightning_tricks.preflight",
    "assert_preflight": "lightning_tricks.preflight",
    "PreflightReport": "lightning_tricks.preflight",
    "AdapterError": "lightning_tricks.protocol",
    "ModelAdapter": "lightning_tricks.protocol",
    "TrickModule": "lightning_tricks.protocol",
    "inspect_data": "lightning_tricks.inspection",
    "DataReport": "lightning_tricks.inspection_report",
    "log_image": "lightning_tricks.media",
    "log_scalars": "lightning_tricks.media",
    "log_table": "lightning_tricks.media",
    "CheckpointEnsemble": "lightning_tricks.callbacks",
    "EnsembleReport": "lightning_tricks.ensemble",
    "CheckpointError": "lightning_tricks.ensemble",
}

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
    "LRBatchScaling",
    "LRRangeTest",
    "LastLayerBiasInit",
    "ModelAdapter",
    "OptunaPruning",
    "OverfitBatchCheck",
    "PredictionDynamics",
    "PreflightReport",
    "RecipeCheckError",
    "SeedEverything",
    "ShuffleCheck",
    "TestTimeAugmentation",
    "TrainingHealthCheck",
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
        VisualizeBatch,
    )
    from lightning_tricks.callbacks.lr_range_test import lr_range_test
    from lightning_tricks.ensemble import CheckpointError, EnsembleReport
    from lightning_tricks.inspection import inspect_data
    from lightning_tricks.inspection_report import DataReport
    from lightning_tricks.media import log_image, log_scalars, log_table
    from lightning_tricks.preflight import PreflightReport, assert_preflight, run_preflight
    from lightning_tricks.protocol import AdapterError, ModelAdapter, TrickModule


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(_EXPORTS[name])
        return module if module.__name__.endswith(f".{name}") else getattr(module, name)
    raise AttributeError(f"module 'lightning_tricks' has no attribute {name!r}")
