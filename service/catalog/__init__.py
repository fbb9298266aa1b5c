"""The algorithm catalog's pure part: descriptors (``scantide-algorithm.yaml``) and their parameters.

Nothing here reads files or the network: callers hand in the descriptor's text and get back a
checked ``AlgorithmDescriptor``, or an ``InvalidDescriptor`` listing every problem.
"""

from __future__ import annotations

from service.catalog.descriptor import (
    DESCRIPTOR_NAMES,
    INPUT_KINDS,
    NAME_PATTERN,
    QUEUE_PATTERN,
    RESERVED_PARAMS,
    RUNNERS,
    AlgorithmDescriptor,
    InputSpec,
    Resources,
    command_argv,
    load_descriptor,
    parse_descriptor,
)

__all__ = [
    "DESCRIPTOR_NAMES", "INPUT_KINDS", "NAME_PATTERN", "QUEUE_PATTERN", "RESERVED_PARAMS", "RUNNERS",
    "AlgorithmDescriptor", "InputSpec", "Resources", "command_argv", "load_descriptor", "parse_descriptor",
]
