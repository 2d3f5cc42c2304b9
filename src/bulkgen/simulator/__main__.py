"""``python -m bulkgen.simulator``: the same command as ``bulkgen simulate``."""

from __future__ import annotations

import typer

from bulkgen.simulator.cli import simulate


def main() -> None:
    typer.run(simulate)


if __name__ == "__main__":
    main()
