"""The compiled pieces: hub/media/_fastsend.c (see hub/media/forward.py),
hub/media/_fastrecv.c (see hub/media/door.py) and hub/media/_reader.c (see
hub/media/reader.py).

Optional: where one does not build, the hub takes the Python path it replaces and says so once.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("hub.media._fastsend", ["hub/media/_fastsend.c"], optional=True),
        Extension("hub.media._fastrecv", ["hub/media/_fastrecv.c"], optional=True),
        Extension("hub.media._reader", ["hub/media/_reader.c"], optional=True),
    ]
)
