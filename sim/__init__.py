"""SIM: Search-based User Interest Modeling (Pi et al., CIKM 2020) as a distributed batch pipeline."""
__version__ = "0.1.0"
