"""The built-in demo: ``convirt demo`` (see :mod:`convirt.demo.run`)."""
