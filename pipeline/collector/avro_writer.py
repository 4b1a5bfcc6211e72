"""The compiled Avro writer now lives in :mod:`pipeline.avro_writer` (the stage workers' codec uses it
too, without importing the collector); these names stay importable from here."""

from ..avro_writer import UnsupportedSchema, Writer, compile_writer, write_bytes, write_long, write_string

__all__ = ["UnsupportedSchema", "Writer", "compile_writer", "write_bytes", "write_long", "write_string"]
