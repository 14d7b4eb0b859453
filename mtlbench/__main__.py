import sys

from mtlbench.cli.commands import main

if __name__ == "__main__":
    sys.exit(main())
