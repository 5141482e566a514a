"""CSV import: CRM exports into the landing zone through a mapping file
(docs/sources/csv_import.md)."""

from revorch.sources.csv_import.importer import FileReport, ImportReport, import_files
from revorch.sources.csv_import.mapping import Mapping, MappingError, load_mapping

__all__ = ["FileReport", "ImportReport", "Mapping", "MappingError", "import_files", "load_mapping"]
