"""HOI evaluation: HICO-DET (Default / Known-Object), V-COCO (AP_role S1/S2, AP_agent), HOI-A.

Entry points: :func:`build_evaluator` (reset / process / evaluate objects), :func:`format_table`,
and the predictions file I/O of ``hqm eval-file`` (:func:`load_predictions`, :func:`save_predictions`).
"""

from hqm.evaluation.base import (
    HOIEvaluator,
    build_evaluator,
    format_class_table,
    format_table,
    gather_records,
    merge_records,
)
from hqm.evaluation.predictions_io import (
    PredictionsFormatError,
    load_predictions,
    predictions_to_records,
    records_to_predictions,
    save_predictions,
)

__all__ = [
    "HOIEvaluator",
    "PredictionsFormatError",
    "build_evaluator",
    "format_class_table",
    "format_table",
    "gather_records",
    "load_predictions",
    "merge_records",
    "predictions_to_records",
    "records_to_predictions",
    "save_predictions",
]
