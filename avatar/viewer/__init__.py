"""The live browser viewer (viser)."""
