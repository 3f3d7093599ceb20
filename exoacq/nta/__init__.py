"""NTA: nanoparticle tracking analysis, a method of exoacq (registered by exoacq.nta.plugin)."""

#: The feature detectors, by the names the settings, the options and re-processing use: "fast" (exoacq's
#: compiled Crocker-Grier locate, exoacq.nta.detect) and "trackpy" (trackpy.locate): the same method.
DETECTORS = ("fast", "trackpy")

#: Plausible ranges of analysis options, the same for `analyze nta` and for re-processing overrides
#: (exoacq.nta.cli_analyze, exoacq.nta.reprocess): a link search range (px), the smallest expected diameter (nm).
SEARCH_RANGE_PX = (0.5, 1000.0)
MIN_DIAMETER_NM = (1.0, 1e5)
#: A given detection threshold is 0 (none) or at least this mass: a smaller one overflows the depth correction.
LEAST_MINMASS = 1e-9
