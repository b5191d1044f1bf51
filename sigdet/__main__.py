"""``python -m sigdet <command> ...``: the ``sigdet`` command."""

from sigdet.cli import main

if __name__ == "__main__":
    main()
