"""``convirt serve``: a local web explorer over an image index (text and image search, labels and Precision@k,
Grad-CAM, zero-shot scores).

:mod:`.explorer` holds what the explorer does, with no web framework; :mod:`.server` the FastAPI routes and the
uvicorn server, with the page in ``static/`` (one HTML file, its script and its style; no build step). The server
needs the optional ``app`` extra (``pip install 'convirt[app]'``: FastAPI and uvicorn), which only ``convirt
serve`` imports: nothing else in convirt imports this package.
"""
