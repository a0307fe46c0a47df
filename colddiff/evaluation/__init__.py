"""Evaluation: restoration metrics, generation metrics (FID/KID or named Fréchet distances) and the replication
audit, as functions that take a model and data and return tables (:func:`evaluate_restoration`,
:func:`generate_images`, :func:`evaluate_generation`, :func:`nearest_training_images`).  The command line is
``evaluate.py``; see README.md for the protocols.  This package does not import Lightning.
"""

from colddiff.evaluation.features import (
    CifarResNetFeatures,
    FeatureExtractor,
    InceptionV3Features,
    ModuleFeatures,
    PixelFeatures,
    build_extractor,
)
from colddiff.evaluation.generation import (
    GenerationReport,
    evaluate_generation,
    generate_images,
    reference_features,
)
from colddiff.evaluation.metrics import (
    ReferenceCache,
    RestorationMetrics,
    extract_features,
    frechet_distance,
    kernel_distance,
    quantize,
)
from colddiff.evaluation.replication import AuditConfig, AuditResult, nearest_training_images, write_audit
from colddiff.evaluation.restoration import RestorationReport, evaluate_restoration, markdown_table

__all__ = [
    "FeatureExtractor", "InceptionV3Features", "CifarResNetFeatures", "PixelFeatures", "ModuleFeatures",
    "build_extractor", "RestorationMetrics", "frechet_distance", "kernel_distance", "extract_features",
    "ReferenceCache", "quantize", "AuditConfig", "AuditResult", "nearest_training_images", "write_audit",
    "RestorationReport", "evaluate_restoration", "markdown_table", "GenerationReport", "generate_images",
    "reference_features", "evaluate_generation",
]
