"""The public interface: the typed config schema and the command line's grammar. The bottom layer."""
