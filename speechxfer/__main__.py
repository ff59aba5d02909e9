"""The ``speechxfer`` command (``python -m speechxfer``): the CLI, or, when the toolkit cannot
even be imported, the report ``speechxfer info`` would need (``versions``)."""

import sys

from .versions import IMPORT_FAILURES, broken_install_report


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            from .cli import main as cli_main
        except IMPORT_FAILURES as err:
            args = sys.argv[1:] if argv is None else argv
            print(broken_install_report(err),
                  file=sys.stdout if args[:1] == ["info"] else sys.stderr)
            return 1
        return cli_main(argv)  # a command's own Ctrl-C is handled there, with its own line
    except KeyboardInterrupt:  # Ctrl-C while torch imports or --device is checked: nothing begun
        print("speechxfer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
