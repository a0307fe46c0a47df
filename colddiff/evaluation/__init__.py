"""Evaluation: restoration metrics, generation metrics (FID/KID or named Fréchet distances, precision/recall, class
entropy) and the replication audit.  The command line is ``evaluate.py``; see README.md for the protocols.

torch-fidelity's registry gets colddiff's classifiers through
:func:`colddiff.evaluation.fidelity.register_torch_fidelity_extractors` (not imported here: it changes a global
registry)."""

from colddiff.evaluation.features import (
    CifarResNetFeatures,
    FeatureExtractor,
    InceptionV3Features,
    MnistClassifierFeatures,
    ModuleFeatures,
    PixelFeatures,
    build_extractor,
)
from colddiff.evaluation.generation import class_entropy, generation_metrics, precision_recall, real_vs_real
from colddiff.evaluation.metrics import (
    CachedFeatures,
    ReferenceCache,
    RestorationMetrics,
    dataset_fingerprint,
    extract_features,
    extract_features_and_logits,
    frechet_distance,
    kernel_distance,
    quantize,
)
from colddiff.evaluation.replication import AuditConfig, AuditResult, nearest_training_images, write_audit

__all__ = [
    "FeatureExtractor", "InceptionV3Features", "CifarResNetFeatures", "MnistClassifierFeatures", "PixelFeatures",
    "ModuleFeatures", "build_extractor", "RestorationMetrics", "frechet_distance", "kernel_distance",
    "generation_metrics", "precision_recall", "class_entropy", "real_vs_real", "extract_features",
    "extract_features_and_logits", "dataset_fingerprint", "ReferenceCache", "CachedFeatures", "quantize",
    "AuditConfig", "AuditResult", "nearest_training_images", "write_audit",
]
