"""The one compiled piece: hub/media/_fastsend.c (see hub/media/forward.py).

Optional: where it does not build, the hub forwards through Python and says so once.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("hub.media._fastsend", ["hub/media/_fastsend.c"], optional=True)])
