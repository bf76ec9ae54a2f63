"""Recipe step 1, "become one with the data": scan every split once, report what is wrong, draw it.

- :mod:`~lightning_tricks.inspection.scan`: :func:`inspect_data`, one streamed pass per split (DDP-sharded);
- :mod:`~lightning_tricks.inspection.report`: :class:`DataReport`, its findings and renderings;
- :mod:`~lightning_tricks.inspection.figures`: the pictures of a report.

The math of the scan is in :mod:`lightning_tricks.functional.data_scan`.
"""

from lightning_tricks.inspection.report import DataReport, Finding, SplitReport
from lightning_tricks.inspection.scan import gather_objects, inspect_data

__all__ = ["DataReport", "Finding", "SplitReport", "gather_objects", "inspect_data"]
