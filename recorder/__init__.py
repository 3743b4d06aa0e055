"""Recording: one more subscriber of a stream's packets, remuxed (never re-encoded) into segments.

segments.py  one WebM segment file (PyAV remux)       stream.py    a stream's sinks and writer thread
session.py   a recorded room session and its manifest (frames come from hub/media/frames.py)
manifest.py  manifest, hash chain, verify, recovery   catalogue.py SQLite catalogue and audit log
service.py   which rooms are recorded (room events)   export.py    one-file MP4 render job (OpenCV)
retention.py deletion of old recordings
"""
