"""The I/O edge where frames are captured: the daemon link, the recording proxy,
the shared upstream dialer and the fast frame path under both."""
