"""The Resource Portability Interface (RPI).

Platform-neutral resource specs (`spec`), the protocol every platform implements (`platform`),
the explicit registry of platforms (`registry`), and the one module that imports cdktf (`cdk`).
This package lives in `constructs/` but is imported as `rpi`, because `constructs` is the name
of the PyPI package that cdktf itself depends on.
"""
