"""Labeling help: which unlabeled images to label next (suggestions), which given labels look
wrong (label issues), from a dataset version's analysis.

- `analyses`: the analysis a worker computes once per version (features, out-of-fold answers)
  and the API reads back.
- `ranking`: the suggestions and the label issues, ranked from it (NumPy only: app.ml.labeling).
"""

from app.services.labeling.analyses import AnalysisStatus, request_analysis, run_analysis
from app.services.labeling.ranking import Pending, label_issues, model_answers, ready, suggestions

__all__ = [
    "AnalysisStatus",
    "Pending",
    "label_issues",
    "model_answers",
    "ready",
    "request_analysis",
    "run_analysis",
    "suggestions",
]
