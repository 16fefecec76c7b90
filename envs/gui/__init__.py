"""GUI grounding environments: procedural screens (``screens``) and the public benchmark formats.

A GUI grounding sample is a dict with ``image`` (or ``image_path``), ``instruction``, ``bbox``
``[x1, y1, x2, y2]`` in original-image pixels, ``image_size`` ``[W, H]``, ``data_type``
(``text`` | ``icon``), ``platform`` and ``source``; rewards read these as per-sample columns.
Registration with the env registry happens elsewhere, so importing this package has no side effects.
"""
