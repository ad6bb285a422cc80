"""`python -m fmnist_exp.predict`: the door to fmnist_exp.commands.predict, where the command lives."""

from fmnist_exp.commands.predict import console

if __name__ == "__main__":
    console()
