"""``python -m asyncq``: the command line."""

from asyncq.cli import main

if __name__ == "__main__":
    main()
