"""The teacher cache: stage one writes it (:mod:`.build`), stage two reads it (:mod:`.reader`).

``layout`` says what is stored and where, ``stores`` holds the two formats (Zarr v3 with sharding, HDF5 with a
virtual dataset), ``records`` the progress records (which clips are done), ``check`` implements ``stdvsr cache info``
and ``stdvsr cache verify``.
"""

from stdvsr.cache.build import CacheConfig, run
from stdvsr.cache.layout import HEAD_MARGIN
from stdvsr.names import DEFAULT_TIERS, TIERS
from stdvsr.cache.reader import CacheDataset, CacheReader, TeacherHead

__all__ = ["CacheConfig", "run", "CacheReader", "CacheDataset", "TeacherHead", "TIERS", "DEFAULT_TIERS",
           "HEAD_MARGIN"]
