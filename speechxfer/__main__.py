"""The ``speechxfer`` command (``python -m speechxfer``): the CLI, or, when the toolkit cannot
even be imported, the report ``speechxfer info`` would need (``versions``)."""

import sys

from .versions import IMPORT_FAILURES, broken_install_report


def main(argv: list[str] | None = None) -> int:
    try:
        from .cli import main as cli_main
    except IMPORT_FAILURES as err:
        args = sys.argv[1:] if argv is None else argv
        print(broken_install_report(err), file=sys.stdout if args[:1] == ["info"] else sys.stderr)
        return 1
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
