"""Evaluation: Frechet distance, the digits classifier metrics (digits FD), toy 2-D metrics, sample grids, and
`make_evaluator`, the one evaluator of a run (offline metrics plus FID & co with local Inception weights)."""
from gendistill.evaluation.digits_classifier import DigitsClassifier
from gendistill.evaluation.digits_classifier import DigitsMetric
from gendistill.evaluation.digits_classifier import digits_metrics
from gendistill.evaluation.digits_classifier import get_digits_metric
from gendistill.evaluation.evaluator import make_evaluator
from gendistill.evaluation.frechet import feature_statistics
from gendistill.evaluation.frechet import frechet_distance
from gendistill.evaluation.frechet import frechet_distance_from_features
from gendistill.evaluation.grid import SCATTER_POINTS
from gendistill.evaluation.grid import make_image_grid
from gendistill.evaluation.grid import save_image_grid
from gendistill.evaluation.grid import save_scatter
from gendistill.evaluation.grid import to_uint8
from gendistill.evaluation.toy_metrics import energy_distance
from gendistill.evaluation.toy_metrics import mixture_metrics
from gendistill.evaluation.toy_metrics import mmd2
from gendistill.evaluation.toy_metrics import sliced_wasserstein
from gendistill.evaluation.toy_metrics import toy_metrics
