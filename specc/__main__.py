"""`python -m specc ...` (also what torchrun launches)."""
from specc.cli import main

if __name__ == "__main__":
    main()
