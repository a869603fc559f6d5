"""Many ranks: the per-rank map, the reduce, and the engines that run the map (docs/scale.md).

`work_items` cuts the input's trace files into work items (one per rank); `map_item` turns one
into a small `RankSummary` (no events); `Reducer` adds summaries up into the `Timing` the rules
read; `LocalEngine` (`--jobs N`) and `RayEngine` (`--engine ray`) run the map.
"""

from .engines import Engine, LocalEngine, RayEngine, engine_from_options
from .items import WorkItem, work_items
from .reduce import Reducer, ScaledTraces, analyze_traces
from .summary import RankSummary, map_item

__all__ = [
    "Engine",
    "LocalEngine",
    "RankSummary",
    "RayEngine",
    "Reducer",
    "ScaledTraces",
    "WorkItem",
    "analyze_traces",
    "engine_from_options",
    "map_item",
    "work_items",
]
