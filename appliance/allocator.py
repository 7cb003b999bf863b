"""The live cluster as the placement engine reads it (iallocator documents, htools text, N+1), for the API and CLI.

The code is `ops._allocator`: operations choose nodes with it in `prepare`, and
operations may import only the model, fastpath and images. This module is its
name for the rest of the appliance (the API's htools route, cluster verify,
`cairn balance -X`).
"""

from ops._allocator import (  # noqa: F401 (re-exported)
    ALLOCATORS, EVACUATION_MODES, TEMPLATES, AllocatorError, Evacuation, NodeFigures, allocate, allocate_request,
    check_allocator, document, evacuate, evacuated_instances, htools_text, ipolicy, move_operations, n1_problems,
    node_figures, operation, options, relocate,
)
