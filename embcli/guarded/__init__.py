"""The only way embcli opens model files: read-only, bounded, and refusing anything that
points outside the file.

Model files are untrusted. Nothing here imports, instantiates or calls what a file names;
JSON is parsed as data (`parsing`); HDF5 links other than hard links, external storage,
virtual datasets, filters and shape bombs are refused before any data is read (`h5`); zip
members are checked for traversal, duplicates, symlinks and bombs (`archive`); and only
regular files are opened, never a FIFO, device or socket (`files`).
"""

from embcli.guarded.archive import (
    MAX_CENTRAL_DIRECTORY,
    MAX_DEFLATE_RATIO,
    MAX_INFLATED_BYTES,
    MAX_MEMBER_BYTES,
    MAX_ZIP_MEMBERS,
    ZIP_EMPTY_SIGNATURE,
    ZIP_ERRORS,
    ZIP_SIGNATURE,
    check_archive,
    check_directory_size,
    member_data_offset,
    read_member,
)
from embcli.guarded.files import (
    MAX_FOLDER_ENTRIES,
    FileWindow,
    check_folder,
    open_regular,
    read_regular,
    sniff,
)
from embcli.guarded.h5 import (
    H5_ERRORS,
    HDF5_SIGNATURE,
    MAX_DIMS,
    MAX_H5_DEPTH,
    MAX_H5_OBJECTS,
    SHAPE_BOMB_FLOOR,
    ByteRange,
    DatasetInfo,
    H5Index,
    check_global_heaps,
    dataset_bytes,
    file_identity,
    h5_root_names,
    index_h5,
    open_h5,
    read_attr_list,
    read_attr_text,
    read_value_text,
    stored_dtype_name,
)
from embcli.guarded.parsing import MAX_JSON_BYTES, MAX_JSON_CONTAINERS, parse_json

__all__ = [
    "H5_ERRORS",
    "HDF5_SIGNATURE",
    "MAX_CENTRAL_DIRECTORY",
    "MAX_DEFLATE_RATIO",
    "MAX_DIMS",
    "MAX_FOLDER_ENTRIES",
    "MAX_H5_DEPTH",
    "MAX_H5_OBJECTS",
    "MAX_INFLATED_BYTES",
    "MAX_JSON_BYTES",
    "MAX_JSON_CONTAINERS",
    "MAX_MEMBER_BYTES",
    "MAX_ZIP_MEMBERS",
    "SHAPE_BOMB_FLOOR",
    "ZIP_EMPTY_SIGNATURE",
    "ZIP_ERRORS",
    "ZIP_SIGNATURE",
    "ByteRange",
    "DatasetInfo",
    "FileWindow",
    "H5Index",
    "check_archive",
    "check_directory_size",
    "check_folder",
    "check_global_heaps",
    "dataset_bytes",
    "file_identity",
    "h5_root_names",
    "index_h5",
    "member_data_offset",
    "open_h5",
    "open_regular",
    "parse_json",
    "read_attr_list",
    "read_attr_text",
    "read_member",
    "read_regular",
    "read_value_text",
    "sniff",
    "stored_dtype_name",
]
