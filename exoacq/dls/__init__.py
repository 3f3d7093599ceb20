"""Dynamic light scattering: photon-counting acquisition, a software correlator, cumulants and
size distributions (ISO 22412:2017), hardware-correlator files. Registered by :mod:`exoacq.dls.plugin`."""
