"""`python -m fmnist_exp.ui`: the door to fmnist_exp.commands.ui, where the command lives."""

from fmnist_exp.commands.ui import main

if __name__ == "__main__":
    main()
