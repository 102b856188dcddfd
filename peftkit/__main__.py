"""`python -m peftkit ...` — what `accelerate launch -m peftkit` and `torchrun -m peftkit` call."""

from peftkit.cli import main

if __name__ == "__main__":
    main()
