"""The node daemon: the I/O shell around `appliance.core` (log, drivers, API, timers); the only place with
nurseries and sockets."""
