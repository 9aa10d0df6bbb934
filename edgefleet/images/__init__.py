"""Builder images: the Debian base image, builder specs, Dockerfile rendering, wheelhouses, builds.

Everything here runs on the host and talks to the engine through the docker SDK;
nothing shells out to the docker CLI.
"""
