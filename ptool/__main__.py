"""`python -m ptool`."""

from ptool.cli import main

if __name__ == "__main__":
    main()
