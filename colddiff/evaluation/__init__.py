"""Evaluation: restoration metrics, generation metrics (FID/KID or named Fréchet distances, precision/recall, class
entropy, the real-vs-real floor) and the replication audit, as functions that take a model and data and return tables
(:func:`evaluate_restoration`, :func:`generate_images`, :func:`evaluate_generation`, :func:`nearest_training_images`).
The command line is ``evaluate.py``; see README.md for the protocols.  This package does not import Lightning.

torch-fidelity's registry gets colddiff's classifiers through
:func:`colddiff.evaluation.fidelity.register_torch_fidelity_extractors` (not imported here: it changes a global
registry).
"""

from colddiff.evaluation.features import (
    CifarResNetFeatures,
    FeatureExtractor,
    InceptionV3Features,
    MnistClassifierFeatures,
    ModuleFeatures,
    PixelFeatures,
    build_extractor,
)
from colddiff.evaluation.generation import (
    GenerationReport,
    evaluate_generation,
    generate_images,
    reference_features,
    select_prior_setting,
)
from colddiff.evaluation.metrics import (
    CachedFeatures,
    CacheEntryError,
    ReferenceCache,
    RestorationMetrics,
    class_entropy,
    dataset_fingerprint,
    extract_features,
    extract_features_and_logits,
    frechet_distance,
    generation_metrics,
    kernel_distance,
    precision_recall,
    quantize,
    real_vs_real,
)
from colddiff.evaluation.replication import AuditConfig, AuditResult, nearest_training_images, write_audit
from colddiff.evaluation.restoration import RestorationReport, evaluate_restoration, markdown_table

__all__ = [
    "FeatureExtractor", "InceptionV3Features", "CifarResNetFeatures", "MnistClassifierFeatures", "PixelFeatures",
    "ModuleFeatures", "build_extractor", "RestorationMetrics", "frechet_distance", "kernel_distance",
    "extract_features", "extract_features_and_logits", "dataset_fingerprint", "ReferenceCache", "CachedFeatures",
    "CacheEntryError",
    "quantize", "precision_recall", "generation_metrics", "class_entropy", "real_vs_real", "AuditConfig",
    "AuditResult", "nearest_training_images", "write_audit", "RestorationReport", "evaluate_restoration",
    "markdown_table", "GenerationReport", "generate_images", "reference_features", "evaluate_generation",
    "select_prior_setting",
]
