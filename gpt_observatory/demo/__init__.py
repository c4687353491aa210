"""``observatory demo``: the whole loop on embedded defaults (``loop.run``), with nothing to start by hand.

``loop`` runs the steps; ``stack`` starts the gateway and its credentials, ``pipeline`` and ``canary``
drive the flows, ``client`` sends the scripted traffic, ``readback`` reads the telemetry the
processes wrote, ``summary`` renders it, ``gpu`` probes NVML. Importing this package loads nothing.
"""
