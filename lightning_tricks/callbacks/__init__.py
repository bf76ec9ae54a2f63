"""The recipe's tricks as Lightning callbacks, one trick per module."""

from lightning_tricks.callbacks.activation_stats import ActivationStats
from lightning_tricks.callbacks.batch_size_schedule import BatchSizeSchedule
from lightning_tricks.callbacks.checkpoint_ensemble import CheckpointEnsemble
from lightning_tricks.callbacks.data_inspection import DataInspection
from lightning_tricks.callbacks.dropout_batchnorm_lint import DropoutBatchNormLint
from lightning_tricks.callbacks.early_stopping import EarlyStopping
from lightning_tricks.callbacks.first_layer_filters import FirstLayerFilters
from lightning_tricks.callbacks.full_dataset_loss import FullDatasetLoss
from lightning_tricks.callbacks.gradient_dependency_probe import GradientDependencyProbe
from lightning_tricks.callbacks.human_baseline import HumanBaseline
from lightning_tricks.callbacks.init_loss_check import InitLossCheck
from lightning_tricks.callbacks.input_independent_baseline import InputIndependentBaseline
from lightning_tricks.callbacks.interrupt_checkpoint import InterruptCheckpoint, TrainingInterrupted
from lightning_tricks.callbacks.last_layer_bias_init import LastLayerBiasInit
from lightning_tricks.callbacks.lr_batch_scaling import LRBatchScaling
from lightning_tricks.callbacks.lr_range_test import LRRangeTest
from lightning_tricks.callbacks.optuna_pruning import OptunaPruning
from lightning_tricks.callbacks.overfit_batch_check import OverfitBatchCheck
from lightning_tricks.callbacks.prediction_dynamics import PredictionDynamics
from lightning_tricks.callbacks.recipe_check import CheckResult, RecipeCheck, RecipeCheckError
from lightning_tricks.callbacks.seed_everything import SeedEverything
from lightning_tricks.callbacks.shuffle_check import ShuffleCheck
from lightning_tricks.callbacks.test_time_augmentation import TestTimeAugmentation
from lightning_tricks.callbacks.training_health_check import TrainingHealthCheck
from lightning_tricks.callbacks.visualize_batch import VisualizeBatch

__all__ = [
    "ActivationStats",
    "BatchSizeSchedule",
    "CheckResult",
    "CheckpointEnsemble",
    "DataInspection",
    "DropoutBatchNormLint",
    "EarlyStopping",
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
    "OptunaPruning",
    "OverfitBatchCheck",
    "PredictionDynamics",
    "RecipeCheck",
    "RecipeCheckError",
    "SeedEverything",
    "ShuffleCheck",
    "TestTimeAugmentation",
    "TrainingHealthCheck",
    "TrainingInterrupted",
    "VisualizeBatch",
]
