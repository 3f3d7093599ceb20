"""NTA: nanoparticle tracking analysis, a method of exoacq (registered by exoacq.nta.plugin)."""

#: The feature detectors, by the names the settings, the options and re-processing use: "fast" (exoacq's
#: compiled Crocker-Grier locate, exoacq.nta.detect) and "trackpy" (trackpy.locate): the same method.
DETECTORS = ("fast", "trackpy")
