"""`python -m fmnist_exp.bench`: the door to fmnist_exp.commands.bench, where the command lives."""

from fmnist_exp.commands.bench import console

if __name__ == "__main__":
    console()
