"""Evaluation: restoration metrics, generation metrics (FID/KID or named Fréchet distances) and the replication
audit.  The command line is ``evaluate.py``; see README.md for the protocols."""

from colddiff.evaluation.features import (
    CifarResNetFeatures,
    FeatureExtractor,
    InceptionV3Features,
    ModuleFeatures,
    PixelFeatures,
    build_extractor,
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

__all__ = [
    "FeatureExtractor", "InceptionV3Features", "CifarResNetFeatures", "PixelFeatures", "ModuleFeatures",
    "build_extractor", "RestorationMetrics", "frechet_distance", "kernel_distance", "extract_features",
    "ReferenceCache", "quantize", "AuditConfig", "AuditResult", "nearest_training_images", "write_audit",
]
