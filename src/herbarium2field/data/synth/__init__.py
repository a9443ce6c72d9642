"""Built-in synthetic two-domain dataset (``h2f synth``): herbarium sheets and field photos of invented species.

Procedural, deterministic per seed and fast, so that the demo and the tests need no download. Layout:
the AML/PlantCLEF lists (``train/herbarium``, ``train/photo``, ``test``, ``list/*.txt``).
"""

from herbarium2field.data.synth.contact_sheet import contact_sheet
from herbarium2field.data.synth.generate import SynthSummary, generate_dataset

__all__ = ["SynthSummary", "contact_sheet", "generate_dataset"]
