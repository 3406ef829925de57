"""The STAC API over the store (``earthops catalog serve``): stac-fastapi with a backend over the search index."""
