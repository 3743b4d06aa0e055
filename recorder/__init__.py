"""Recording: remuxes forwarded packets into segmented files (PyAV); see issue "Recording and playback".
"""
