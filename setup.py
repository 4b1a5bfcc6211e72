"""Packaging hook (the metadata is in pyproject.toml): ships the top-level ``schemas/``
folder, the source of truth, inside the wheel as ``pipeline/schemas`` so an installed
(non-editable) Leadstream finds its Avro schemas (``pipeline.codec.schemas_dir``)."""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class BuildPyWithSchemas(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads ./schemas in place
        source = ROOT / "schemas"
        if not (source / "catalogue.yaml").is_file():
            raise SystemExit(f"build: {source} is missing: the wheel needs the schemas")
        target = Path(self.build_lib) / "pipeline" / "schemas"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)


setup(cmdclass={"build_py": BuildPyWithSchemas})
