"""The fake Netmera REST API lives in `include.demo.fake_netmera` (the demo's Netmera sandbox is
the same fake with its state kept in a file; product code must not import tests/). Its
docstring has the operations and the faults."""

from include.demo.fake_netmera import (
    API_KEY_HEADER,
    NETMERA_FAULTS,
    PLATFORMS,
    PREFIX,
    Delivery,
    FakeNetmera,
    NetmeraFault,
    push_outcome,
)

__all__ = [
    "API_KEY_HEADER",
    "NETMERA_FAULTS",
    "PLATFORMS",
    "PREFIX",
    "Delivery",
    "FakeNetmera",
    "NetmeraFault",
    "push_outcome",
]
