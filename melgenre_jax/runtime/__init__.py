"""The machine a run lives on: devices and hosts, processes, host memory."""
