"""`python -m fmnist_exp.run`: the door to fmnist_exp.commands.run, where the command lives."""

from fmnist_exp.commands.run import main

if __name__ == "__main__":
    main()
