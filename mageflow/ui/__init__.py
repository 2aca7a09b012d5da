"""The web viewer behind ``mageflow ui``: the workflow list, live trees and the four controls.

Nothing here is imported by ``import mageflow``: starlette and uvicorn (the ``ui`` extra) load
only when the viewer starts, so the library and the rest of the command line do without them.
"""
