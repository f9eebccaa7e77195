"""`python -m jtts.serve [OPTIONS]` is `jtts serve [OPTIONS]`: the same options, messages and exit statuses."""
import sys

from jtts import cli
from jtts.errors import JttsError, one_line
from jtts.serve import add_serve_parser


def main(argv=None) -> int:
    parser = cli._Parser(prog="jtts")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except (JttsError, OSError) as e:
        print(f"jtts serve: error: {one_line(e)}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except KeyboardInterrupt:
        print("jtts serve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
