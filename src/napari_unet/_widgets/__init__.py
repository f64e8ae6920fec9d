"""napari dock widgets: thin translators between layers and the napari-free core."""

from .annotate import AnnotateWidget
from .live import LiveTrainWidget
from .segment import SegmentWidget
from .train import TrainWidget
from .weight_map import WeightMapWidget

__all__ = ["AnnotateWidget", "LiveTrainWidget", "SegmentWidget", "TrainWidget", "WeightMapWidget"]
