"""`python -m microprocess.chaos`: the chaos suite (see `microprocess.chaos.suite`)."""

from microprocess.chaos.suite import main

if __name__ == "__main__":
    raise SystemExit(main())
