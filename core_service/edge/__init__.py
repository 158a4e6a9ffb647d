"""The gRPC edge of the core: servicers, protobuf message conversion, call metadata, and the
interceptors that check the admin token and turn domain errors into gRPC status.

Everything that knows of `grpc` or of generated `*_pb2` modules lives here (and in the
composition root that assembles the server); the domain packages know neither. A servicer
reads a call's metadata, converts its message into domain values, calls the domain and
converts the answer back: no policy of its own.
"""
