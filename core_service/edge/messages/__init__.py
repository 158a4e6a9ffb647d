"""Domain values as protobuf messages (and back), one module per area."""
