"""Nano flow cytometry: pulses, calibrated scatter and fluorescence, FCS, gates and controls."""
