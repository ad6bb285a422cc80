"""`python -m fmnist_exp.report`: the door to fmnist_exp.commands.report, where the command lives."""

from fmnist_exp.commands.report import console

if __name__ == "__main__":
    console()
