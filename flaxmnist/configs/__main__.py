"""``python -m flaxmnist.configs``: writes the field table of docs/configuration.md from the schema.

The table lies between the document's ``fields`` markers; the rest of the document is kept.
tests/test_config_schema.py fails while the table is out of date.
"""

import argparse
from pathlib import Path

from flaxmnist import config_schema
from flaxmnist.testing import write_between_markers

CONFIGURATION_DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
WRITER = "python -m flaxmnist.configs"


def main(argv: list[str] | None = None) -> None:
    """Rewrites the table and says where (``--help`` says what it does and writes nothing)."""
    argparse.ArgumentParser(prog=WRITER, description=__doc__).parse_args(argv)
    write_between_markers(CONFIGURATION_DOC, "fields", config_schema.markdown_table(), WRITER)
    print(f"wrote the config field table of {CONFIGURATION_DOC}")


if __name__ == "__main__":
    main()
