"""`python -m fmnist_exp.evaluate`: the door to fmnist_exp.commands.evaluate, where the command lives."""

from fmnist_exp.commands.evaluate import console

if __name__ == "__main__":
    console()
