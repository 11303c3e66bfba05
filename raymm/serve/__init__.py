"""The online half of raymm: the Ray Serve application (see :mod:`raymm.serve.app`)."""
