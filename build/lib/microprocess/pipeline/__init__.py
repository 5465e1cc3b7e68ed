"""The pipeline: splitter and its sources, the push queue, the forwarder and its HTTP push,
the dead-letter handler, the sweeper, and `runtime`, which wires them for the Lambda handlers."""
